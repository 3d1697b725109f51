"""The whole accelerator in Amaranth's simulator against the golden model."""

import numpy as np
import pytest

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, LoadTarget, Opcode, StoreMode, encode
from serrano.hw.mult import MultiplierTarget
from serrano.sim.backend import SimulationTimeout
from serrano.sim.golden import GoldenBackend
from serrano.sim.pysim import PysimBackend
from programs import SMALL_CONFIGS as CONFIGS, gemm_program, patch_field, random_program



def assert_same(hw, ref, what):
    assert hw.status == ref.status, f"{what}: status {hw.status} != golden {ref.status}"
    diff = np.flatnonzero(hw.memory != ref.memory)
    assert diff.size == 0, (f"{what}: {diff.size} memory bytes differ from golden, first at "
                            f"{diff[:8].tolist()}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", range(6))
def test_random_programs_match_golden(name, seed):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed * 7919 + len(name))
    words, memory = random_program(cfg, rng, length=14, malformed=seed % 3 == 2)
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg).run(words, memory, max_cycles=20_000)
    assert_same(hw, ref, f"{name} seed {seed}")
    assert hw.counters["instructions"] == (len(words) if ref.status.error == ErrorCode.NONE
                                           else ref.status.fault_index)


FAULTS = {
    ErrorCode.BAD_OPCODE: 0x1234_0006,
    ErrorCode.BAD_FIELD: patch_field(encode(Opcode.STORE, n_rows=1, n_cols=1), Opcode.STORE,
                                     "mode", 3),
    ErrorCode.BAD_SIZE: encode(Opcode.MATMUL, n_rows=0),
    ErrorCode.BUF_RANGE: encode(Opcode.LOAD, target=LoadTarget.WGT.value, buf_addr=3,
                                n_rows=2, row_bytes=1),
    ErrorCode.MEM_RANGE: encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=2, n_cols=1,
                                mem_addr=1000, mem_stride=30),
}


@pytest.mark.parametrize("code", list(FAULTS), ids=lambda c: c.name)
def test_fault_has_no_side_effects_and_clear_recovers(code):
    cfg = CONFIGS["2x2_w4"]
    rng = np.random.default_rng(int(code.value))
    memory = np.zeros(1024, np.uint8)
    x = rng.integers(-128, 128, (5, 2), dtype=np.int8)
    w = rng.integers(-128, 128, (2, 2), dtype=np.int8)
    memory[0:10] = x.view(np.uint8).ravel()
    memory[64:68] = w.view(np.uint8).ravel()
    good = gemm_program(cfg, 0, 64, 128, 5)
    # The fault sits after a complete GEMM and before a store that would overwrite 512..
    after = encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=5, n_cols=2,
                   mem_addr=512, mem_stride=8)
    words = good + [FAULTS[code], after, encode(Opcode.HALT)]

    ref = GoldenBackend(cfg).run(words, memory)
    assert ref.status == isa_status(code, len(good))
    faulted, recovered = PysimBackend(cfg).run_sequence(
        [(words, memory), (good + [encode(Opcode.HALT)], memory)], max_cycles=5_000)
    assert_same(faulted, ref, f"fault {code.name}")
    expect = (x.astype(np.int32) @ w.astype(np.int32)).astype("<i4").view(np.uint8).ravel()
    np.testing.assert_array_equal(faulted.memory[128:168], expect)
    assert not faulted.memory[512:552].any(), "an instruction after the fault wrote memory"
    assert recovered.status.ok, f"after clear: {recovered.status}"
    np.testing.assert_array_equal(recovered.memory[128:168], expect)


def isa_status(code, index):
    from serrano.sim.backend import RunStatus
    return RunStatus(done=True, error=code, fault_index=index)


def test_program_without_halt_ends_idle_and_not_done():
    cfg = CONFIGS["2x2_w4"]
    memory = np.arange(256, dtype=np.uint8)
    words = gemm_program(cfg, 0, 64, 128, 3)
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg).run(words, memory, max_cycles=2_000)
    assert not hw.status.done and hw.status.error == ErrorCode.NONE
    assert_same(hw, ref, "no HALT")


def test_cycle_budget_raises_instead_of_hanging():
    cfg = CONFIGS["2x2_w4"]
    words = gemm_program(cfg, 0, 64, 128, 16) + [encode(Opcode.HALT)]
    with pytest.raises(SimulationTimeout, match="did not finish within 20 cycles"):
        PysimBackend(cfg).run(words, np.zeros(256, np.uint8), max_cycles=20)


def test_buffers_survive_clear():
    """Buffer contents are kept across `clear`: a second program can reuse loaded tiles."""
    cfg = CONFIGS["2x2_w4"]
    memory = np.zeros(512, np.uint8)
    memory[:8] = [1, 2, 3, 4, 5, 6, 7, 8]
    load = gemm_program(cfg, 0, 0, 256, 4)[:2] + [encode(Opcode.HALT)]
    use = gemm_program(cfg, 0, 0, 256, 4)[2:] + [encode(Opcode.HALT)]
    first, second = PysimBackend(cfg).run_sequence([(load, memory), (use, memory)])
    assert first.status.ok and second.status.ok
    x = memory[:8].astype(np.int32).reshape(4, 2)
    w = memory[:4].astype(np.int32).reshape(2, 2)
    np.testing.assert_array_equal(second.memory[256:288].view("<i4").reshape(4, 2), x @ w)


def test_back_to_back_matmuls_accumulate_across_tiles_without_draining():
    """Many short MATMULs into the same accumulator rows: the add-into path must see each
    previous write (transparent read-modify-write) and weights must swap per tile."""
    cfg = CONFIGS["3x2_w8"]
    rng = np.random.default_rng(5)
    tiles = 2  # weight slots in wgt_depth=6
    memory = rng.integers(0, 256, 256, dtype=np.uint8)
    words = [encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=16, row_bytes=3,
                    mem_addr=0, mem_stride=3),
             encode(Opcode.LOAD, target=LoadTarget.WGT.value, n_rows=6, row_bytes=2,
                    mem_addr=64, mem_stride=2)]
    for m in (1, 1, 2, 3, 1, 6, 7, 1):
        for t in range(tiles):
            words.append(encode(Opcode.MATMUL, act_addr=int(rng.integers(0, 16 - m + 1)),
                                n_rows=m, wgt_addr=3 * t, acc_addr=0, accumulate=1))
    words += [encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=8, n_cols=2,
                     mem_addr=128, mem_stride=8), encode(Opcode.HALT)]
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg).run(words, memory, max_cycles=5_000)
    assert_same(hw, ref, "accumulate chain")


def test_load_waits_for_a_store_to_the_memory_it_reads():
    """RAW through memory: a LOAD right after a STORE to the same bytes must see the new
    data (the store is still in the output pipeline when the load is decoded)."""
    cfg = CONFIGS["2x2_w4"]
    memory = np.zeros(512, np.uint8)
    memory[0:8] = [1, 2, 3, 4, 5, 6, 7, 8]   # x rows: (1,2) (3,4) (5,6) (7,8)
    memory[64:68] = [1, 0, 0, 1]             # identity weights
    words = gemm_program(cfg, 0, 64, 128, 4) + [
        # Overwrite x with its own int32 results' low bytes, then reload and multiply again.
        encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=4, n_cols=2, mem_addr=0,
               mem_stride=2),
        encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=4, row_bytes=2,
               mem_addr=0, mem_stride=2),
        encode(Opcode.MATMUL, n_rows=4, acc_addr=4),
        encode(Opcode.STORE, mode=StoreMode.RAW.value, acc_addr=4, n_rows=4, n_cols=2,
               mem_addr=256, mem_stride=8),
        encode(Opcode.HALT)]
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg).run(words, memory, max_cycles=2_000)
    assert_same(hw, ref, "store -> load through memory")


def test_load_waits_for_a_queued_matmul_that_reads_its_rows():
    """WAR on the activation buffer: a LOAD must not overwrite rows that a MATMUL already
    dispatched (waiting behind a long one) has not streamed yet."""
    cfg = CONFIGS["2x2_w4"]
    rng = np.random.default_rng(11)
    memory = rng.integers(0, 256, 512, dtype=np.uint8)
    words = [
        encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=16, row_bytes=2,
               mem_addr=0, mem_stride=2),
        encode(Opcode.LOAD, target=LoadTarget.WGT.value, n_rows=4, row_bytes=2,
               mem_addr=64, mem_stride=2),
        encode(Opcode.MATMUL, act_addr=0, n_rows=14, acc_addr=0),
        encode(Opcode.MATMUL, act_addr=14, n_rows=2, wgt_addr=2, acc_addr=14),
        encode(Opcode.LOAD, target=LoadTarget.ACT.value, buf_addr=14, n_rows=2,
               row_bytes=2, mem_addr=300, mem_stride=2),
        encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=16, n_cols=2, mem_addr=128,
               mem_stride=8),
        encode(Opcode.HALT)]
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg).run(words, memory, max_cycles=2_000)
    assert_same(hw, ref, "queued matmul vs load")


@pytest.mark.parametrize("n_rows", [1, 2, 5])
def test_store_waits_for_the_last_result_of_a_short_matmul(n_rows):
    """RAW on the accumulator: a STORE right after a MATMUL shorter than the array's latency
    must wait until that MATMUL's last result is written (the drain countdown)."""
    cfg = AcceleratorConfig(rows=4, cols=4, act_depth=16, wgt_depth=8, acc_depth=16,
                            param_depth=2, mem_width=8, mem_bytes=1024)
    rng = np.random.default_rng(n_rows)
    memory = rng.integers(0, 256, 1024, dtype=np.uint8)
    words = [encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=16, row_bytes=4,
                    mem_addr=0, mem_stride=4),
             encode(Opcode.LOAD, target=LoadTarget.WGT.value, n_rows=8, row_bytes=4,
                    mem_addr=64, mem_stride=4)]
    for i in range(3):
        words += [encode(Opcode.MATMUL, act_addr=i, n_rows=n_rows, wgt_addr=4 * (i % 2),
                         acc_addr=4 * i, accumulate=i % 2),
                  encode(Opcode.STORE, mode=StoreMode.RAW.value, acc_addr=4 * i,
                         n_rows=n_rows, n_cols=4, mem_addr=512 + 128 * i, mem_stride=16)]
    words.append(encode(Opcode.HALT))
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg).run(words, memory, max_cycles=3_000)
    assert_same(hw, ref, f"short matmul ({n_rows} rows) then store")


@pytest.mark.parametrize("acc_addrs", [(8, 12, 0), (0, 4, 12), (8, 12, 4, 6, 0),
                                       (0, 4, 8, 6, 12)])
def test_store_waits_for_the_union_of_draining_matmuls(acc_addrs):
    """One-row MATMULs on a 2-row array finish faster than a drain takes, so with both drain
    entries busy a finishing one merges into entry 1 (which then covers the whole buffer).
    A STORE of the last one's row, below or above what entry 1 held, must still wait for
    it. (Checked: with entry 1 left as it was on a merge, both orders of three fail.)"""
    cfg = AcceleratorConfig(rows=2, cols=4, act_depth=16, wgt_depth=4, acc_depth=16,
                            param_depth=2, mem_width=8, mem_bytes=1024)
    rng = np.random.default_rng(sum(acc_addrs))
    memory = rng.integers(0, 256, 1024, dtype=np.uint8)
    words = [encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=16, row_bytes=2,
                    mem_addr=0, mem_stride=4),
             encode(Opcode.LOAD, target=LoadTarget.WGT.value, n_rows=4, row_bytes=4,
                    mem_addr=64, mem_stride=4)]
    for i, acc in enumerate(acc_addrs):
        words.append(encode(Opcode.MATMUL, act_addr=3 * i + 1, n_rows=1, wgt_addr=2 * (i % 2),
                            acc_addr=acc, accumulate=0))
    words += [encode(Opcode.STORE, mode=StoreMode.RAW.value, acc_addr=acc_addrs[-1], n_rows=1,
                     n_cols=4, mem_addr=512, mem_stride=16),
              encode(Opcode.HALT)]
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg).run(words, memory, max_cycles=3_000)
    assert_same(hw, ref, f"matmuls to {acc_addrs} then a store of the last")


@pytest.mark.parametrize("seed", range(3))
def test_fpga_multiplier_latency_changes_no_result(seed):
    """With the ECP5 DSP model in the PEs (latency 5 instead of 1) the timing adapts by
    itself: the same random programs give the golden model's results."""
    cfg = CONFIGS["3x2_w8"]
    target = MultiplierTarget(family="ecp5", dsp_pes=4, simulation=True)
    words, memory = random_program(cfg, np.random.default_rng(100 + seed), length=14)
    ref = GoldenBackend(cfg).run(words, memory)
    hw = PysimBackend(cfg, target=target).run(words, memory, max_cycles=20_000)
    assert_same(hw, ref, f"ecp5 target seed {seed}")
