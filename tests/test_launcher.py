"""torchrun command lines: an argument list (no shell), single node standalone, multi-node c10d."""

from pathlib import Path

from harness.launch import Launcher
from conftest import cli


def test_single_node_is_standalone():
    cmd = Launcher(nproc=2).command(Path("/r/spec.json"), "run-1")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                       "-m", "harness.train", "/r/spec.json"]


def test_multi_node_passes_rendezvous_through():
    launcher = Launcher(nproc=8, nnodes=4, node_rank=3, rdzv_endpoint="node0:29500")
    cmd = launcher.command(Path("/r/spec.json"), "run-1")
    assert launcher.world_size == 32 and not launcher.records
    joined = " ".join(cmd)
    assert "--nnodes 4 --node-rank 3 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id run-1" in joined
    assert "--standalone" not in cmd


def test_multi_node_needs_an_endpoint(tmp_path):
    proc = cli("sweep", "qkv_bias", "--nnodes", "2", "--results", str(tmp_path))
    assert proc.returncode == 2 and "--rdzv-endpoint" in proc.stderr
