// Serrano compiled-simulation harness: the engine-independent run loop.
//
// This file implements docs/architecture.md, "Simulation memory model", in C++ so that a whole
// program runs without returning to Python once per cycle. It is cycle-identical with
// sim/pysim.py (PysimBackend.run_sequence, one program); every ordering decision below mirrors
// that file.
//
// The compiled top level is not hw.top.Accelerator itself but `sim.compiled.HarnessTop`, which
// instantiates it unchanged and registers its inputs (instruction stream, memory response):
// the inputs of cycle t+1 are fully known before the clock edge that ends cycle t (the
// instruction index moves on acceptance; a read response is due `latency` >= 1 cycles after
// its request), so the harness writes them to `*_next` ports and they reach the accelerator at
// that edge. The model then settles once per cycle, at the edge, instead of once for the
// edge and again for the new inputs. Inputs that change without a clock edge (cycle 0, the
// cycle `clear` is raised in) are applied with a separate clock (`prime_clk`) that leaves the
// accelerator untouched.
//
// An engine file (verilator_main.cpp, cxxrtl_main.cpp) defines a `Model` class with:
//   void init();                                  // every input 0, clocks low, settle
//   void set_instr(const uint32_t *payload, bool valid);  // next cycle's; nullptr keeps it
//   void set_resp(const uint32_t *payload, bool valid);   // next cycle's; nullptr keeps it
//   void set_clear(bool clear);                   // next cycle's
//   void prime();                                 // apply the `*_next` inputs now, no edge
//   void posedge(); void negedge();               // the clock edge ending a cycle, and after
//   bool instr_ready(); bool req_valid(); void req_payload(uint32_t *words);
//   bool status_bit(unsigned offset); void status(uint32_t *w); void counters(uint32_t *w);
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

// Pending read responses, in acceptance order (at most one request is accepted per cycle, so
// at most `latency` are in flight): a read accepted in cycle t is presented in cycle
// t + latency, for one cycle.
struct Response {
    uint64_t cycle;
    uint32_t data[SERRANO_RESP_WORDS];
};

struct ResponseQueue {
    std::vector<Response> ring;
    size_t head = 0, count = 0;
    explicit ResponseQueue(unsigned latency) : ring(latency + 1) {}
    bool ready(uint64_t cycle) const { return count && ring[head].cycle == cycle; }
    const Response &front() const { return ring[head]; }
    void pop() { head = (head + 1) % ring.size(); count--; }
    Response &push() {
        Response &r = ring[(head + count) % ring.size()];
        count++;
        return r;
    }
};

// Inputs of one cycle, as pysim's testbench sets them: instruction word i is driven with
// valid = 1 until accepted; after the last word valid drops and the payload keeps its last
// value; a response payload likewise stays on the port after its valid cycle.
struct InputSource {
    const uint32_t *words;
    uint64_t n_words;
    uint64_t next_word = 0;
    uint64_t offered = UINT64_MAX;  // index of the word on the port; n_words: valid is low
    bool resp_on = false;

    template <class Model>
    void drive(Model &model, ResponseQueue &responses, uint64_t cycle) {
        if (next_word < n_words) {
            if (offered != next_word) {
                model.set_instr(&words[next_word * SERRANO_INSTR_WORDS], true);
                offered = next_word;
            }
        } else if (offered != n_words) {
            model.set_instr(nullptr, false);
            offered = n_words;
        }
        if (responses.ready(cycle)) {
            model.set_resp(responses.front().data, true);
            responses.pop();
            resp_on = true;
        } else if (resp_on) {
            model.set_resp(nullptr, false);
            resp_on = false;
        }
    }
};

// One accelerator and its waveform across the programs of a sequence (PysimBackend.run_sequence):
// the first program starts from the model fresh from construction (every register at its
// init value); before each later one, `clear` is pulsed as pysim does it: in the cycle the
// previous program ended in, the inputs change to clear = 1, instr.valid = 0, resp.valid = 0,
// and the next clock edge starts the new program's cycle 0. Each program:
//   * ends, before the clock edge, in the first cycle with status.done, or with status.idle
//     once every word was accepted; at cycle == max_cycles it times out (cycles count from
//     the program's cycle 0);
//   * sees the memory image padded to whole words: bytes past image_len read as zero and
//     writes to them are dropped.
template <class Model>
struct Session {
    Model model;
    bool tracing = false;
    bool started = false;
    uint64_t time = 0;  // waveform time, in half cycles

    void open(const char *trace_path) {
        model.init();
        tracing = trace_path && trace_path[0];
        if (tracing)
            model.trace_open(trace_path);
    }
    void close() {
        if (tracing)
            model.trace_close();
    }
    void dump() {
        if (tracing)
            model.trace_dump(time);
        time++;
    }

    int run(const uint32_t *words, uint64_t n_words, uint8_t *image, uint64_t image_len,
            unsigned latency, uint64_t max_cycles, uint32_t *status_out,
            uint32_t *counters_out, uint64_t *cycles_out) {
        if (latency < 1 || image_len > (uint64_t)SERRANO_MEM_BYTES)
            return END_BAD_ARGS;
        const uint64_t padded = (image_len + SERRANO_MEM_WIDTH - 1) / SERRANO_MEM_WIDTH
                                * SERRANO_MEM_WIDTH;
        uint8_t *mem = (uint8_t *)calloc((size_t)(padded ? padded : 1), 1);
        if (!mem)
            return END_NO_MEMORY;
        memcpy(mem, image, (size_t)image_len);

        ResponseQueue responses(latency);
        InputSource source{words, n_words};
        uint32_t req[SERRANO_REQ_WORDS];

        if (!started) {
            source.drive(model, responses, 0);
            model.prime();
            started = true;
        } else {
            model.set_instr(nullptr, false);
            model.set_resp(nullptr, false);
            model.set_clear(true);
            model.prime();
            dump();
            model.set_clear(false);
            source.drive(model, responses, 0);
            model.posedge();
            dump();
            model.negedge();
        }

        uint64_t cycle = 0;
        int end;
        for (;;) {
            // The model is settled for cycle `cycle`: sample.
            dump();
            if (model.status_bit(SERRANO_STATUS_DONE_OFFSET)) {
                end = END_DONE;
                break;
            }
            if (source.next_word >= n_words && model.status_bit(SERRANO_STATUS_IDLE_OFFSET)) {
                end = END_IDLE;
                break;
            }
            if (cycle >= max_cycles) {
                end = END_TIMEOUT;
                break;
            }

            // The memory and the instruction source act on what they saw during the cycle.
            if (model.req_valid()) {
                model.req_payload(req);
                const uint64_t addr = get_bits(req, SERRANO_REQ_ADDR_OFFSET,
                                               SERRANO_REQ_ADDR_WIDTH);
                const uint64_t base = addr * SERRANO_MEM_WIDTH;
                if (get_bit(req, SERRANO_REQ_WRITE_OFFSET)) {
                    for (unsigned b = 0; b < SERRANO_MEM_WIDTH; b++) {
                        if (get_bit(req, SERRANO_REQ_MASK_OFFSET + b) && base + b < image_len)
                            mem[base + b] = (uint8_t)get_bits(
                                req, SERRANO_REQ_DATA_OFFSET + 8 * b, 8);
                    }
                } else {
                    Response &r = responses.push();
                    r.cycle = cycle + latency;
                    memset(r.data, 0, sizeof r.data);
                    if (base < padded) {
                        for (unsigned b = 0; b < SERRANO_MEM_WIDTH; b++)
                            r.data[b / 4] |= (uint32_t)mem[base + b] << (8 * (b % 4));
                    }
                }
            }
            if (source.next_word < n_words && model.instr_ready())
                source.next_word++;

            // Next cycle's inputs, then the clock edge that applies them.
            source.drive(model, responses, cycle + 1);
            model.posedge();
            dump();
            model.negedge();
            cycle++;
        }
        model.status(status_out);
        model.counters(counters_out);
        *cycles_out = cycle;
        memcpy(image, mem, (size_t)image_len);
        free(mem);
        return end;
    }
};

// The C entry points, instantiated by an engine file for its Model.
#define SERRANO_DEFINE_ENTRY_POINTS(ModelClass, engine_name)                                   \
    SERRANO_EXPORT void *serrano_open(const char *trace_path) {                                \
        auto *session = new serrano::Session<ModelClass>();                                    \
        session->open(trace_path);                                                             \
        return session;                                                                        \
    }                                                                                          \
    SERRANO_EXPORT int serrano_run(void *handle, const uint32_t *words, uint64_t n_words,      \
                                   uint8_t *image, uint64_t image_len, unsigned latency,       \
                                   uint64_t max_cycles, uint32_t *status_out,                  \
                                   uint32_t *counters_out, uint64_t *cycles_out) {             \
        return static_cast<serrano::Session<ModelClass> *>(handle)->run(                       \
            words, n_words, image, image_len, latency, max_cycles, status_out, counters_out,   \
            cycles_out);                                                                       \
    }                                                                                          \
    SERRANO_EXPORT void serrano_close(void *handle) {                                          \
        auto *session = static_cast<serrano::Session<ModelClass> *>(handle);                   \
        session->close();                                                                      \
        delete session;                                                                        \
    }                                                                                          \
    SERRANO_EXPORT const char *serrano_engine() { return engine_name; }                        \
    SERRANO_EXPORT int serrano_has_trace() { return SERRANO_TRACE; }

}  // namespace serrano

#endif
