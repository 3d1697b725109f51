// Serrano compiled-simulation harness: the engine-independent run loop.
//
// This file implements docs/architecture.md, "Simulation memory model", in C++ so that a whole
// program runs without returning to Python once per cycle. It must stay cycle-identical with
// sim/pysim.py; every ordering decision below (when inputs are driven, when outputs are
// sampled, when the run ends) mirrors that file.
//
// An engine file (verilator_main.cpp, cxxrtl_main.cpp) defines a `Model` class with:
//   void reset_inputs();                           // all inputs 0, clk low, settle
//   void drive(const uint32_t *instr, bool instr_valid,
//              const uint32_t *resp, bool resp_valid);   // set inputs, clk low, settle
//   bool instr_ready(); bool req_valid();
//   void req_payload(uint32_t *words);            // SERRANO_REQ_WORDS words
//   bool status_bit(unsigned offset);
//   void status(uint32_t *words); void counters(uint32_t *words);
//   void posedge();                                // clk high, settle
//   void trace_open(const char *path); void trace_dump(uint64_t time); void trace_close();
// and includes this header after serrano_config.h (generated from hw/isa.py by
// sim/compiled.py: widths and bit offsets, never spelled out by hand here).

#ifndef SERRANO_HARNESS_H
#define SERRANO_HARNESS_H

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#define SERRANO_EXPORT extern "C" __attribute__((visibility("default")))

namespace serrano {

enum RunEnd : int { END_DONE = 0, END_IDLE = 1, END_TIMEOUT = 2, END_BAD_ARGS = 3,
                    END_NO_MEMORY = 4 };

static inline uint64_t get_bits(const uint32_t *words, unsigned offset, unsigned width) {
    // width <= 64; reads 32-bit chunks, never past the word holding bit offset + width - 1.
    uint64_t value = 0;
    unsigned got = 0;
    while (got < width) {
        const unsigned bit = offset + got;
        const unsigned shift = bit % 32;
        unsigned take = 32 - shift;
        if (take > width - got)
            take = width - got;
        const uint64_t mask = take == 32 ? 0xffffffffull : ((1ull << take) - 1);
        value |= ((uint64_t)(words[bit / 32] >> shift) & mask) << got;
        got += take;
    }
    return value;
}

static inline uint32_t get_bit(const uint32_t *words, unsigned bit) {
    return (words[bit / 32] >> (bit % 32)) & 1u;
}

// Pending read responses: a read accepted in cycle t is presented in cycle t + latency, for
// one cycle. At most one request is accepted per cycle, so a ring of `latency` slots indexed
// by cycle modulo latency holds every response in flight.
struct ReadPipe {
    unsigned latency;
    std::vector<uint8_t> valid;
    std::vector<uint32_t> data;  // latency x SERRANO_RESP_WORDS

    explicit ReadPipe(unsigned latency)
        : latency(latency), valid(latency, 0), data((size_t)latency * SERRANO_RESP_WORDS, 0) {}
    uint32_t *slot(uint64_t cycle) { return &data[(cycle % latency) * SERRANO_RESP_WORDS]; }
};

template <class Model>
int run(Model &model, const uint32_t *words, uint64_t n_words,
        uint8_t *image, uint64_t image_len, unsigned latency, uint64_t max_cycles,
        const char *trace_path, uint32_t *status_out, uint32_t *counters_out,
        uint64_t *cycles_out) {
    if (latency < 1 || image_len > (uint64_t)SERRANO_MEM_BYTES)
        return END_BAD_ARGS;
    // The whole address space; calloc maps untouched pages lazily, so a large mem_bytes costs
    // only what the program touches.
    uint8_t *mem = (uint8_t *)calloc((size_t)SERRANO_MEM_BYTES, 1);
    if (!mem)
        return END_NO_MEMORY;
    memcpy(mem, image, (size_t)image_len);

    ReadPipe pipe(latency);
    static const uint32_t zero_instr[SERRANO_INSTR_WORDS] = {0};
    uint32_t req[SERRANO_REQ_WORDS];
    const bool tracing = trace_path && trace_path[0];
    if (tracing)
        model.trace_open(trace_path);

    uint64_t next_word = 0;
    uint64_t cycle = 0;
    int end;
    model.reset_inputs();
    for (;;) {
        // Cycle `cycle`: drive this cycle's inputs, let combinational logic settle, sample.
        const bool instr_valid = next_word < n_words;
        const uint32_t *instr = instr_valid ? &words[next_word * SERRANO_INSTR_WORDS]
                                            : zero_instr;
        const bool resp_valid = pipe.valid[cycle % latency] != 0;
        model.drive(instr, instr_valid, pipe.slot(cycle), resp_valid);
        if (tracing)
            model.trace_dump(2 * cycle);
        if (model.status_bit(SERRANO_STATUS_DONE_OFFSET)) {
            end = END_DONE;
            break;
        }
        if (next_word == n_words && model.status_bit(SERRANO_STATUS_IDLE_OFFSET)) {
            end = END_IDLE;
            break;
        }
        if (cycle >= max_cycles) {
            end = END_TIMEOUT;
            break;
        }
        const bool accept_instr = instr_valid && model.instr_ready();
        const bool req_valid = model.req_valid();
        if (req_valid)
            model.req_payload(req);

        // Clock edge: the design registers its inputs; the memory and the instruction source
        // act on what they saw during the cycle.
        model.posedge();
        if (tracing)
            model.trace_dump(2 * cycle + 1);
        pipe.valid[cycle % latency] = 0;
        if (accept_instr)
            next_word++;
        if (req_valid) {
            const uint64_t addr = get_bits(req, SERRANO_REQ_ADDR_OFFSET, SERRANO_REQ_ADDR_WIDTH);
            const uint64_t base = addr * SERRANO_MEM_WIDTH;
            // The port's address width can reach past mem_bytes when mem_words is not a power
            // of two; such a word reads as zero and ignores writes (the decoder rejects any
            // access that would reach it, so only a hardware bug gets here).
            const bool in_range = base + SERRANO_MEM_WIDTH <= (uint64_t)SERRANO_MEM_BYTES;
            if (get_bit(req, SERRANO_REQ_WRITE_OFFSET)) {
                if (in_range) {
                    for (unsigned b = 0; b < SERRANO_MEM_WIDTH; b++) {
                        if (get_bit(req, SERRANO_REQ_MASK_OFFSET + b))
                            mem[base + b] = (uint8_t)get_bits(
                                req, SERRANO_REQ_DATA_OFFSET + 8 * b, 8);
                    }
                }
            } else {
                uint32_t *slot = pipe.slot(cycle);
                memset(slot, 0, SERRANO_RESP_WORDS * sizeof(uint32_t));
                if (in_range) {
                    for (unsigned b = 0; b < SERRANO_MEM_WIDTH; b++)
                        slot[b / 4] |= (uint32_t)mem[base + b] << (8 * (b % 4));
                }
                pipe.valid[cycle % latency] = 1;
            }
        }
        cycle++;
    }
    model.status(status_out);
    model.counters(counters_out);
    *cycles_out = cycle;
    if (tracing)
        model.trace_close();
    memcpy(image, mem, (size_t)image_len);
    free(mem);
    return end;
}

}  // namespace serrano

#endif
