// Serrano compiled simulation, Verilator engine: adapts the Verilated `Vtop` class to the
// run loop in harness.h and exports the C entry point sim/compiled.py calls through ctypes.
//
// serrano_config.h is generated per configuration by sim/compiled.py: widths and bit offsets
// (from hw/isa.py) and SERRANO_TRACE. The Verilated top is sim.compiled.HarnessTop, whose port
// names contain no `__` (which Verilator would escape as `___05F`).

#include "serrano_config.h"

#include <cstddef>
#include <cstdint>
#include <memory>

#include "Vtop.h"
#include "verilated.h"
#if SERRANO_TRACE
#include "verilated_vcd_c.h"
#endif

#include "harness.h"

namespace {

// Top-level ports are CData/SData/IData/QData up to 64 bits and VlWide<N> above.
template <class T>
inline void put(T &port, const uint32_t *w, unsigned nwords) {
    uint64_t v = w[0];
    if (nwords > 1)
        v |= (uint64_t)w[1] << 32;
    port = (T)v;
}
template <std::size_t N>
inline void put(VlWide<N> &port, const uint32_t *w, unsigned) {
    for (std::size_t i = 0; i < N; i++)
        port.at(i) = w[i];
}
template <class T>
inline void get(const T &port, uint32_t *w, unsigned nwords) {
    const uint64_t v = port;
    w[0] = (uint32_t)v;
    if (nwords > 1)
        w[1] = (uint32_t)(v >> 32);
}
template <std::size_t N>
inline void get(const VlWide<N> &port, uint32_t *w, unsigned) {
    for (std::size_t i = 0; i < N; i++)
        w[i] = port.at(i);
}
template <class T>
inline bool bit(const T &port, unsigned off) {
    return ((uint64_t)port >> off) & 1u;
}
template <std::size_t N>
inline bool bit(const VlWide<N> &port, unsigned off) {
    return (port.at(off / 32) >> (off % 32)) & 1u;
}

class Model {
public:
    Model() : ctx(new VerilatedContext), top(new Vtop(ctx.get(), "top")) {}
    ~Model() { top->final(); }

    void init() {
        top->clk = 0;
        top->prime_clk = 0;
        top->instr_valid = 0;
        top->resp_valid = 0;
        top->clear = 0;
        top->req_ready = 0;
        top->eval();
    }
    void set_instr(const uint32_t *payload, bool valid) {
        if (payload)
            put(top->instr_payload, payload, SERRANO_INSTR_WORDS);
        top->instr_valid = valid;
    }
    void set_resp(const uint32_t *payload, bool valid) {
        if (payload)
            put(top->resp_payload, payload, SERRANO_RESP_WORDS);
        top->resp_valid = valid;
    }
    void set_clear(bool clear) { top->clear = clear; }
    void set_req_ready(bool ready) { top->req_ready = ready; }
    void prime() {
        top->prime_clk = 1;
        top->eval();
        top->prime_clk = 0;
        top->eval();
    }
    void posedge() {
        top->clk = 1;
        top->eval();
    }
    void negedge() {
        top->clk = 0;
        top->eval();
    }
    bool instr_ready() { return top->instr_ready; }
    bool req_valid() { return top->req_valid; }
    void req_payload(uint32_t *w) { get(top->req_payload, w, SERRANO_REQ_WORDS); }
    bool status_bit(unsigned off) { return bit(top->status, off); }
    void status(uint32_t *w) { get(top->status, w, SERRANO_STATUS_WORDS); }
    void counters(uint32_t *w) { get(top->counters, w, SERRANO_COUNTERS_WORDS); }

#if SERRANO_TRACE
    void trace_open(const char *path) {
        ctx->traceEverOn(true);
        trace.reset(new VerilatedVcdC);
        top->trace(trace.get(), 99);
        trace->open(path);
    }
    void trace_dump(uint64_t time) { trace->dump(time); }
    void trace_close() { trace->close(); }
#else
    void trace_open(const char *) {}
    void trace_dump(uint64_t) {}
    void trace_close() {}
#endif

private:
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vtop> top;
#if SERRANO_TRACE
    std::unique_ptr<VerilatedVcdC> trace;
#endif
};

}  // namespace

SERRANO_DEFINE_ENTRY_POINTS(Model, "verilator")
