// Serrano compiled simulation, CXXRTL engine: adapts the `cxxrtl_design::p_top` class written
// by Yosys `write_cxxrtl` to the run loop in harness.h and exports the C entry point that
// sim/compiled.py calls through ctypes.
//
// serrano_config.h is generated per configuration by sim/compiled.py (widths and bit offsets
// from hw/isa.py, SERRANO_TRACE). The design is sim.compiled.HarnessTop; CXXRTL names a port
// `p_` + its name with `_` doubled (`instr_payload` becomes `p_instr__payload`).

#include "serrano_config.h"

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <memory>

#include "top.h"
#if SERRANO_TRACE
#include <cxxrtl/cxxrtl_vcd.h>
#endif

#include "harness.h"

namespace {

using cxxrtl::value;
using cxxrtl::wire;

// Inputs are value<N>; an output is value<N> when combinational and wire<N> when it is a
// register (read its current value). Chunks are 32-bit, like the harness's word arrays.
static_assert(sizeof(cxxrtl::chunk_t) == 4, "CXXRTL chunks are expected to be 32-bit");

template <size_t N>
inline void put(value<N> &port, const uint32_t *w) {
    for (size_t i = 0; i < value<N>::chunks; i++)
        port.data[i] = w[i];
    port.data[value<N>::chunks - 1] &= value<N>::msb_mask;
}
template <size_t N>
inline void get(const value<N> &port, uint32_t *w) {
    for (size_t i = 0; i < value<N>::chunks; i++)
        w[i] = port.data[i];
}
template <size_t N>
inline void get(const wire<N> &port, uint32_t *w) {
    get(port.curr, w);
}
template <size_t N>
inline bool bit(const value<N> &port, unsigned off) {
    return (port.data[off / 32] >> (off % 32)) & 1u;
}
template <size_t N>
inline bool bit(const wire<N> &port, unsigned off) {
    return bit(port.curr, off);
}

class Model {
public:
    void init() {
        top.p_clk.set<bool>(false);
        top.p_prime__clk.set<bool>(false);
        top.p_instr__valid.set<bool>(false);
        top.p_resp__valid.set<bool>(false);
        top.p_clear.set<bool>(false);
        top.p_req__ready.set<bool>(false);
        top.step();
    }
    void set_instr(const uint32_t *payload, bool valid) {
        if (payload)
            put(top.p_instr__payload, payload);
        top.p_instr__valid.set<bool>(valid);
    }
    void set_resp(const uint32_t *payload, bool valid) {
        if (payload)
            put(top.p_resp__payload, payload);
        top.p_resp__valid.set<bool>(valid);
    }
    void set_clear(bool clear) { top.p_clear.set<bool>(clear); }
    void set_req_ready(bool ready) { top.p_req__ready.set<bool>(ready); }
    void prime() {
        top.p_prime__clk.set<bool>(true);
        top.step();
        top.p_prime__clk.set<bool>(false);
        top.step();
    }
    void posedge() {
        top.p_clk.set<bool>(true);
        top.step();
    }
    void negedge() {
        top.p_clk.set<bool>(false);
        top.step();
    }
    bool instr_ready() { return bit(top.p_instr__ready, 0); }
    bool req_valid() { return bit(top.p_req__valid, 0); }
    void req_payload(uint32_t *w) { get(top.p_req__payload, w); }
    bool status_bit(unsigned off) { return bit(top.p_status, off); }
    void status(uint32_t *w) { get(top.p_status, w); }
    void counters(uint32_t *w) { get(top.p_counters, w); }

#if SERRANO_TRACE
    void trace_open(const char *path) {
        cxxrtl::debug_items items;
        top.debug_info(&items, nullptr, "top ");
        vcd.timescale(1, "ns");
        vcd.add_without_memories(items);
        file.open(path, std::ios::out | std::ios::trunc);
    }
    void trace_dump(uint64_t time) {
        vcd.sample(time);
        if (vcd.buffer.size() > (1u << 20)) {
            file << vcd.buffer;
            vcd.buffer.clear();
        }
    }
    void trace_close() {
        file << vcd.buffer;
        vcd.buffer.clear();
        file.close();
    }
#else
    void trace_open(const char *) {}
    void trace_dump(uint64_t) {}
    void trace_close() {}
#endif

private:
    cxxrtl_design::p_top top;
#if SERRANO_TRACE
    cxxrtl::vcd_writer vcd;
    std::ofstream file;
#endif
};

}  // namespace

SERRANO_DEFINE_ENTRY_POINTS(Model, "cxxrtl")
