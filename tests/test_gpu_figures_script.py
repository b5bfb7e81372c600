"""scripts/gpu_figures.sh without a GPU: it refuses a wrong call with exit status 2, names its
logs after the card, heads each with what produced it, and exits 1 when a step fails.

The GPU's tools are stood in for by small scripts on a PATH of our own: a fake
``nvidia-smi`` that names a card, and a fake ``python3`` whose exit status the test picks.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_figures.sh"
#: What the script calls besides the GPU's tools and Python.
TOOLS = ("bash", "dirname", "awk", "sed", "date", "git", "mkdir", "timeout", "grep", "tail", "env")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _bin(tmp_path: Path, card: str | None, python_status: int = 0, smi_status: int = 0) -> Path:
    """A folder for PATH: the tools above, and fakes of nvidia-smi (when ``card``) and python3."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (folder / tool).symlink_to(found)
    fakes = {"python3": f'echo "python3 $*"\nexit {python_status}\n'}
    if card is not None:
        fakes["nvidia-smi"] = f'echo "{card}"\nexit {smi_status}\n'
    for name, body in fakes.items():
        (folder / name).write_text("#!/bin/bash\n" + body)
        (folder / name).chmod(0o755)
    return folder


def _run(tmp_path: Path, args: list[str], card: str | None = "NVIDIA H100 80GB HBM3", python_status: int = 0,
         smi_status: int = 0):
    env = {"PATH": str(_bin(tmp_path, card, python_status, smi_status)), "HOME": str(tmp_path)}
    return subprocess.run([shutil.which("bash"), str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)


@pytest.mark.parametrize("args", [[], ["everything"], ["bench", "--fast"], ["bench", "--tag"]])
def test_a_wrong_call_prints_the_usage_and_exits_2(tmp_path, args):
    done = _run(tmp_path, args)
    assert done.returncode == 2
    assert "scripts/gpu_figures.sh validate" in done.stdout and "third-party" in done.stdout


def test_without_nvidia_smi_it_says_so_in_one_line_and_exits_2(tmp_path):
    done = _run(tmp_path, ["bench"], card=None)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nvidia-smi" in lines[0] and "GPU" in lines[0]


def test_logs_are_named_after_the_card_and_headed_by_what_made_them(tmp_path):
    out = tmp_path / "logs"
    done = _run(tmp_path, ["bench", "--tag", "t1", "--out", str(out), "--commit", "abc1234"])
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["h100_t1_bench_kernels.log", "h100_t1_bench_prefill.log", "h100_t1_bench_selection.log"]
    lines = (out / "h100_t1_bench_prefill.log").read_text().splitlines()
    assert "NVIDIA H100 80GB HBM3" in lines[0] and "tree at abc1234" in lines[0]
    assert lines[0].endswith("python3 benchmarks/bench_prefill.py --quick")
    assert lines[1] == "python3 benchmarks/bench_prefill.py --quick"  # what the fake python3 echoed
    assert lines[-1] == "exit status 0"


def test_a_failing_step_makes_the_script_exit_1_and_say_which(tmp_path):
    done = _run(tmp_path, ["third-party", "--out", str(tmp_path / "logs"), "--commit", "abc1234"], python_status=3)
    assert done.returncode == 1
    assert "!! third_party: exit status 3" in done.stdout


def test_out_defaults_to_the_device_machines_out_folder(tmp_path):
    out = tmp_path / "device_out"
    env_bin = _bin(tmp_path, "NVIDIA H200")
    done = subprocess.run([shutil.which("bash"), str(SCRIPT), "third-party", "--tag", "t2", "--commit", "abc1234"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={"PATH": str(env_bin), "HOME": str(tmp_path), "OUT": str(out)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in out.iterdir()] == ["h200_t2_third_party.log"]
    assert not (ROOT / "benchmarks" / "results" / "h200_t2_third_party.log").exists()


def test_the_flex_part_runs_bench_kernels_with_flexattention_and_names_its_log(tmp_path):
    out = tmp_path / "logs"
    done = _run(tmp_path, ["flex", "--tag", "t3", "--out", str(out), "--commit", "abc1234"])
    assert done.returncode == 0, done.stdout + done.stderr
    [log] = list(out.iterdir())
    assert log.name == "h100_t3_bench_kernels_flex.log"
    command = log.read_text().splitlines()[1]  # what the fake python3 was asked to run
    assert command.startswith("python3 benchmarks/bench_kernels.py") and "--no-flex" not in command


def _run_with_sanitizer(tmp_path: Path, part: str, tag: str):
    """Run ``part`` with a fake compute-sanitizer (it echoes its arguments); return the logs' first lines."""
    out = tmp_path / "logs"
    env_bin = _bin(tmp_path, "NVIDIA H100 80GB HBM3")
    (env_bin / "compute-sanitizer").write_text('#!/bin/bash\necho "compute-sanitizer $*"\n')
    (env_bin / "compute-sanitizer").chmod(0o755)
    done = subprocess.run([shutil.which("bash"), str(SCRIPT), part, "--tag", tag, "--out", str(out), "--commit", "abc1234"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={"PATH": str(env_bin), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.name: p.read_text().splitlines()[0] for p in out.iterdir()}


def test_the_validate_part_names_its_test_settings_in_each_header(tmp_path):
    headers = _run_with_sanitizer(tmp_path, "validate", "t4")
    assert sorted(headers) == [f"h100_t4_{n}.log" for n in
                               ("memcheck", "thorough_seed1", "thorough_seed2", "thorough_seed3")]
    assert "TS_GPU_MAX_EXAMPLES=2 compute-sanitizer --tool memcheck" in headers["h100_t4_memcheck.log"]
    assert "HYPOTHESIS_PROFILE=thorough TS_GPU_MAX_EXAMPLES=334 python3 -m pytest" in headers["h100_t4_thorough_seed2.log"]
    assert headers["h100_t4_thorough_seed2.log"].endswith("--hypothesis-seed=2")


def test_the_racecheck_part_runs_alone_with_workers(tmp_path):
    headers = _run_with_sanitizer(tmp_path, "racecheck", "t5")
    assert list(headers) == ["h100_t5_racecheck.log"]
    header = headers["h100_t5_racecheck.log"]
    assert "TS_GPU_MAX_EXAMPLES=2 compute-sanitizer --tool racecheck" in header and header.endswith(" -n 4")


@pytest.mark.parametrize(
    "args, says",
    [(["bench", "--out", "{file}/logs"], "cannot write there"),
     (["bench", "--tag", "a/b"], "--tag 'a/b'"),
     (["bench", "--tag", ""], "--tag ''")],
)
def test_a_careless_option_is_one_line_and_exit_2_before_anything_runs(tmp_path, args, says):
    plain = tmp_path / "plain"
    plain.write_text("not a folder")
    args = [a.replace("{file}", str(plain)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "logs")]
    done = _run(tmp_path, args + ["--commit", "abc1234"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0]
    assert done.stdout == "" and not (tmp_path / "logs").exists()


def test_nvidia_smi_that_finds_no_gpu_is_one_line_and_exit_2(tmp_path):
    done = _run(tmp_path, ["bench", "--out", str(tmp_path / "logs"), "--commit", "abc1234"],
                card="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver", smi_status=9)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "found no GPU" in lines[0] and "NVIDIA-SMI has failed" in lines[0]
    assert not list((tmp_path / "logs").glob("*.log"))
