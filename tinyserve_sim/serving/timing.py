"""How long one scheduler step takes: a roofline model of a server's iteration.

The memory managers decide *how many* sequences fit in a batch; this module
decides how long the batch takes, so that the simulator can measure latency
and throughput, not only memory (the vLLM paper's Fig. 12 and 13).

What one iteration does
    Every token of the batch goes through the model's dense layers (the
    projections, the MLP, the output head): the GPU reads **every weight
    once** per iteration, however many tokens share it, and does about
    **2 FLOPs per parameter per token** (one multiply-add; Kaplan et al.,
    *Scaling Laws for Neural Language Models*, 2020, §2.1). Then attention:
    a decoding sequence reads the keys and values of **every token it holds**
    (its context), a prompt being prefilled attends causally to itself.

The roofline
    Each phase takes the larger of its *memory time* (bytes moved / achieved
    bandwidth) and its *compute time* (FLOPs / achieved FLOP/s) (Williams,
    Waterman and Patterson, *Roofline*, CACM 2009). The phases of one
    iteration run one after the other, so their times add up, plus a fixed
    *overhead* per iteration (scheduling, sampling, kernel launches: host
    time that no phase hides):

    ========================  =============================================  ====================================
    phase                     memory time                                    compute time
    ========================  =============================================  ====================================
    dense layers              parameter bytes / memory bandwidth             FLOPs per token x tokens / FLOP/s
    decode attention          KV bytes per token x (context + new tokens)    attention FLOPs per pair x context
                              / attention bandwidth                          / FLOP/s
    prefill attention         KV bytes per token x prompt tokens             attention FLOPs per pair x
                              / attention bandwidth (writing them)           causal pairs / FLOP/s
    ========================  =============================================  ====================================

    With a batch of a few dozen decodes, the dense layers are memory-bound
    (the weights are read for only a few dozen tokens each), and decode
    attention always is (one multiply-add per byte of KV): a step's time
    grows with the context the batch holds, which is why the batch a memory
    manager fits decides the throughput.

Prefill and decode in separate iterations
    vLLM at the paper's time never mixed them: a step that admitted prompts
    ran them alone ("Don't schedule decodes if prefills are scheduled",
    ``_schedule_default`` in vLLM v0's ``vllm/core/scheduler.py``). So with
    ``separate_prefill=True`` (every preset) a simulated step that admits
    requests costs a decode iteration for the running batch *and* a prefill
    iteration for the newcomers, each paying the weights and the overhead.
    ``separate_prefill=False`` models mixed batches (Orca's selective batching,
    vLLM v1's chunked prefill): one pass over the weights for every token.

Presets
    :data:`TIME_MODELS` holds the paper's setting (OPT-13B on one A100-40GB)
    and the GPUs this project measures on (H100, H200), each with its KV
    capacity; ``constant-40ms`` is the old constant step, for comparison.
    Every figure says where it comes from (``docs/concepts/serving-time.md``
    has the table). Write your own with :class:`ModelSpec`,
    :class:`HardwareSpec` and :class:`RooflineTime`, or as a JSON file read by
    :func:`load_time_model`.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from tinyserve_sim.errors import InvalidArgumentError

GiB = 2**30


# ----------------------------------------------------------------------------- the work of one step
@dataclass(frozen=True)
class StepWork:
    """What one scheduler step computes; the scheduler fills it in.

    Attributes:
        decode_tokens: sequences that decode one token this step.
        decode_context: tokens of KV those decodes attend to, summed over the
            sequences (each sequence's tokens, the new one included).
        prefill_tokens: prompt tokens computed this step (admitted requests;
            after a preemption, the prompt and the tokens generated before it).
        prefill_pairs: (query, key) pairs of the prefills' causal attention:
            ``n (n + 1) / 2`` for a prompt of ``n`` tokens.
        paged: the KV cache is paged (the attention kernel gathers blocks
            through a block table) rather than contiguous.
    """

    decode_tokens: int = 0
    decode_context: int = 0
    prefill_tokens: int = 0
    prefill_pairs: int = 0
    paged: bool = True


def causal_pairs(start: int, end: int) -> int:
    """Attention pairs of the tokens ``start+1 .. end`` of a sequence: token ``i`` attends to ``i`` tokens.

    >>> causal_pairs(0, 4)      # a 4-token prompt: 1 + 2 + 3 + 4
    10
    >>> causal_pairs(4, 6)      # two more tokens, recomputed after it: 5 + 6
    11
    """
    return (end * (end + 1) - start * (start + 1)) // 2


# ----------------------------------------------------------------------------- what the model and GPU are
@dataclass(frozen=True)
class ModelSpec:
    """The figures of a model that set its iteration time.

    Attributes:
        name: a label.
        param_bytes: bytes of weights, read once per iteration.
        layers: transformer layers.
        hidden: width of the attention, query heads x head dimension.
        kv_bytes_per_token: bytes of keys and values one token stores, over
            all layers: 2 (K and V) x layers x KV heads x head dimension x
            bytes per element.
        flops_per_token: FLOPs of the dense layers per token, about 2 per parameter.
        source: where the figures come from.
    """

    name: str
    param_bytes: float
    layers: int
    hidden: int
    kv_bytes_per_token: float
    flops_per_token: float
    source: str = ""

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of attention per (query, key) pair over all layers: ``q.k`` and ``p * v``,
        a multiply-add each per dimension, so ``4 x layers x hidden``."""
        return 4.0 * self.layers * self.hidden


@dataclass(frozen=True)
class HardwareSpec:
    """The achieved speeds of one GPU (not its datasheet peaks).

    Attributes:
        name: a label.
        memory_bandwidth: bytes/s when streaming the weights.
        matrix_flops: FLOP/s of large fp16 matrix products (tensor cores).
        attention_bandwidth: bytes/s a decode attention kernel reads over
            contiguous KV (one range per sequence).
        paged_attention_bandwidth: bytes/s a decode attention kernel reads
            over paged KV (blocks gathered through a block table).
        memory_bytes: the GPU's memory (the KV capacity is what the weights leave).
        source: where the figures come from.
    """

    name: str
    memory_bandwidth: float
    matrix_flops: float
    attention_bandwidth: float
    paged_attention_bandwidth: float
    memory_bytes: float
    source: str = ""


# ----------------------------------------------------------------------------- time models
class TimeModel(Protocol):
    """What the scheduler asks of a time model.

    Attributes:
        name: a label, printed with results.
        kv_capacity_tokens: KV slots of the deployment it describes (used when
            the run gives no capacity of its own).
    """

    name: str
    kv_capacity_tokens: int

    def step_time(self, work: StepWork) -> float:
        """Seconds one step of ``work`` takes."""
        ...

    def decode_step_times(self, decode_tokens: int, contexts: np.ndarray, paged: bool) -> np.ndarray:
        """Seconds of several decode-only steps of ``decode_tokens`` sequences, one per entry of ``contexts``."""
        ...


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds of each phase of one step (see the module doc); ``total`` is their sum."""

    overhead: float
    dense: float
    decode_attention: float
    prefill_attention: float

    @property
    def total(self) -> float:
        return self.overhead + self.dense + self.decode_attention + self.prefill_attention


@dataclass(frozen=True)
class RooflineTime:
    """A roofline time model: a model on a GPU, plus a fixed overhead per iteration.

    Attributes:
        name: a label (the preset's name).
        model: the model's figures.
        hardware: the GPU's achieved speeds.
        overhead: seconds per iteration that no phase hides (host work).
        kv_capacity_tokens: KV slots of this deployment.
        separate_prefill: prompts run in their own iteration (vLLM at the
            paper's time), not mixed with the decodes.
        note: how the figures were chosen.

    >>> t = TIME_MODELS["opt-13b-a100"]
    >>> one = t.step_time(StepWork(decode_tokens=1, decode_context=500))
    >>> busy = t.step_time(StepWork(decode_tokens=40, decode_context=40 * 500))
    >>> round(one * 1000), round(busy * 1000)   # ms: overhead and weights, then the batch's KV reads
    (41, 56)
    >>> t.phases(StepWork(decode_tokens=40, decode_context=40 * 500)).decode_attention > 0.014
    True
    """

    name: str
    model: ModelSpec
    hardware: HardwareSpec
    overhead: float
    kv_capacity_tokens: int
    separate_prefill: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        check_time_model(self)

    # ------------------------------------------------------------- phases
    def _dense(self, tokens: int | np.ndarray) -> float | np.ndarray:
        """The dense layers over ``tokens`` tokens: read every weight once, 2 FLOPs per weight and token."""
        memory = self.model.param_bytes / self.hardware.memory_bandwidth
        compute = self.model.flops_per_token * tokens / self.hardware.matrix_flops
        return np.maximum(memory, compute)

    def _decode_attention(self, tokens: int | np.ndarray, context: int | np.ndarray, paged: bool) -> float | np.ndarray:
        """Decode attention: read the KV of the whole context (and write the new tokens' KV)."""
        bandwidth = self.hardware.paged_attention_bandwidth if paged else self.hardware.attention_bandwidth
        memory = self.model.kv_bytes_per_token * (context + tokens) / bandwidth
        compute = self.model.attention_flops_per_pair * context / self.hardware.matrix_flops
        return np.maximum(memory, compute)

    def _prefill_attention(self, tokens: int, pairs: int, paged: bool) -> float:
        """Prefill attention: causal pairs of FLOPs; write the prompts' KV."""
        bandwidth = self.hardware.paged_attention_bandwidth if paged else self.hardware.attention_bandwidth
        memory = self.model.kv_bytes_per_token * tokens / bandwidth
        compute = self.model.attention_flops_per_pair * pairs / self.hardware.matrix_flops
        return float(max(memory, compute))

    def phases(self, work: StepWork) -> PhaseTimes:
        """Seconds of each phase of one step (a phase with no work takes 0)."""
        decoding, prefilling = work.decode_tokens > 0, work.prefill_tokens > 0
        if self.separate_prefill:
            iterations = int(decoding) + int(prefilling)
            dense = (float(self._dense(work.decode_tokens)) if decoding else 0.0) + (
                float(self._dense(work.prefill_tokens)) if prefilling else 0.0
            )
        else:
            iterations = int(decoding or prefilling)
            dense = float(self._dense(work.decode_tokens + work.prefill_tokens)) if iterations else 0.0
        decode = float(self._decode_attention(work.decode_tokens, work.decode_context, work.paged)) if decoding else 0.0
        prefill = self._prefill_attention(work.prefill_tokens, work.prefill_pairs, work.paged) if prefilling else 0.0
        return PhaseTimes(self.overhead * iterations, dense, decode, prefill)

    def step_time(self, work: StepWork) -> float:
        """Seconds one step of ``work`` takes: the sum of its phases."""
        return self.phases(work).total

    def decode_step_times(self, decode_tokens: int, contexts: np.ndarray, paged: bool) -> np.ndarray:
        """Seconds of decode-only steps of ``decode_tokens`` sequences, one per context (vectorised)."""
        contexts = np.asarray(contexts, dtype=np.float64)
        if decode_tokens <= 0:
            return np.zeros_like(contexts)
        return self.overhead + self._dense(decode_tokens) + self._decode_attention(decode_tokens, contexts, paged)

    def to_json(self) -> dict:
        """A JSON-friendly dict that :func:`time_model_from_json` reads back."""
        return asdict(self)


@dataclass(frozen=True)
class ConstantTime:
    """Every step takes ``seconds``, whatever the batch (the simulator's first model).

    Useful for comparison: with it, the ratios between memory managers depend
    on the constant chosen (issue 13 of this project measured a vLLM/Oracle
    batch ratio of 1.08x at 20 ms and 2.33x at 60 ms on the same workload).
    A step that does nothing (no decode, no prefill) takes no time.
    """

    seconds: float = 0.04
    kv_capacity_tokens: int = 15_728
    name: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise InvalidArgumentError(f"a constant step time must be a positive number of seconds, got {self.seconds!r}")
        _check_capacity(self.kv_capacity_tokens, "kv_capacity_tokens")
        if not self.name:
            object.__setattr__(self, "name", f"constant-{self.seconds * 1000:g}ms")

    def step_time(self, work: StepWork) -> float:
        return self.seconds if (work.decode_tokens or work.prefill_tokens) else 0.0

    def decode_step_times(self, decode_tokens: int, contexts: np.ndarray, paged: bool) -> np.ndarray:
        return np.full(np.shape(contexts), self.seconds if decode_tokens > 0 else 0.0)


# ----------------------------------------------------------------------------- checks
def _check_capacity(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        raise InvalidArgumentError(f"{name} must be a whole number of tokens in [1, 2**31 - 1], got {value!r}")


def _check_positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{name} must be a positive finite number, got {value!r}")


def check_time_model(t: RooflineTime) -> None:
    """Raise :class:`InvalidArgumentError` naming the first impossible figure of ``t``."""
    if not isinstance(t.model, ModelSpec):
        raise InvalidArgumentError(f"model must be a ModelSpec, got {type(t.model).__name__}")
    if not isinstance(t.hardware, HardwareSpec):
        raise InvalidArgumentError(f"hardware must be a HardwareSpec, got {type(t.hardware).__name__}")
    for spec, prefix in ((t.model, "model"), (t.hardware, "hardware")):
        for f in fields(spec):
            if f.name in ("name", "source"):
                continue
            _check_positive(getattr(spec, f.name), f"{prefix}.{f.name}")
    for name in ("layers", "hidden"):
        value = getattr(t.model, name)
        if int(value) != value:
            raise InvalidArgumentError(f"model.{name} must be a whole number, got {value!r}")
    if isinstance(t.overhead, bool) or not isinstance(t.overhead, (int, float)) or not (
        math.isfinite(t.overhead) and t.overhead >= 0
    ):
        raise InvalidArgumentError(f"overhead must be a finite number of seconds >= 0, got {t.overhead!r}")
    _check_capacity(t.kv_capacity_tokens, "kv_capacity_tokens")
    if not isinstance(t.separate_prefill, bool):
        raise InvalidArgumentError(f"separate_prefill must be true or false, got {t.separate_prefill!r}")


def kv_capacity(hardware: HardwareSpec, model: ModelSpec, utilization: float = 0.9, reserved: float = 2 * GiB) -> int:
    """KV slots left on ``hardware`` once ``model`` is loaded, as vLLM sizes its cache.

    vLLM takes ``gpu_memory_utilization`` (default 0.9) of the GPU memory,
    subtracts the weights and the activations of a profiling run, and gives the
    rest to the KV cache. ``reserved`` stands for the activations (our
    assumption: 2 GiB).
    """
    free = utilization * hardware.memory_bytes - model.param_bytes - reserved
    if free < model.kv_bytes_per_token:
        raise InvalidArgumentError(f"{model.name} leaves no KV memory on {hardware.name}")
    return int(free // model.kv_bytes_per_token)


# ----------------------------------------------------------------------------- presets
#: OPT-13B: 40 layers, hidden size 5,120, 40 heads (Zhang et al., *OPT*, 2022, Table 1); 26 GB of fp16
#: weights and 800 KiB of KV per token (vLLM paper, Fig. 1 and §3).
OPT_13B = ModelSpec(
    "OPT-13B", param_bytes=26e9, layers=40, hidden=5120, kv_bytes_per_token=2 * 40 * 5120 * 2,
    flops_per_token=2 * 13e9, source="OPT paper Table 1; vLLM paper §3 (26 GB weights, 800 KiB/token)",
)
#: Llama-3-8B: 32 layers, hidden 4,096 (32 query heads of 128), 8 KV heads; 8.03 B parameters in bf16
#: (Meta's model card and config). Its attention shape is the one this project's kernel bench measures at Hkv=8.
LLAMA3_8B = ModelSpec(
    "Llama-3-8B", param_bytes=2 * 8.03e9, layers=32, hidden=4096, kv_bytes_per_token=2 * 32 * 8 * 128 * 2,
    flops_per_token=2 * 8.03e9, source="Meta Llama 3 model card (32 layers, 8 KV heads of 128, 8.03 B parameters)",
)

#: Fractions of the datasheet peaks the presets assume where the project has no measurement.
STREAM_EFFICIENCY = 0.88  # this project's H100 copy: 2.952 TB/s of 3.35 TB/s peak
MATMUL_EFFICIENCY = 0.70  # large fp16 GEMMs on tensor cores (assumption)
#: vLLM paper §7.1 (Fig. 18a): its PagedAttention kernel has 20-26% higher latency than
#: FasterTransformer's contiguous one; we take the middle, 23%.
PAPER_PAGED_SLOWDOWN = 1.23

A100_40GB = HardwareSpec(
    "A100-40GB",
    memory_bandwidth=STREAM_EFFICIENCY * 1.555e12,
    matrix_flops=MATMUL_EFFICIENCY * 312e12,
    attention_bandwidth=STREAM_EFFICIENCY * 1.555e12,
    paged_attention_bandwidth=STREAM_EFFICIENCY * 1.555e12 / PAPER_PAGED_SLOWDOWN,
    memory_bytes=40 * GiB,
    source="NVIDIA A100 datasheet (1,555 GB/s, 312 TFLOP/s fp16) x the efficiencies above; "
    "paged attention 23% slower (vLLM paper §7.1)",
)
#: H100 80GB HBM3: benchmarks/results/bench_h100_lead_final.log (bench_kernels.py, 2026-11-22, kernel v4; the
#: later kernels have no H100 run yet): device copy 2.952 TB/s; B=64 L=4096 Hq=32: paged_attention (auto)
#: 3.028 TB/s at 32 KV heads and 2.273 TB/s at 8; torch SDPA over contiguous K/V 2.979 and 2.668 TB/s.
#: 989 TFLOP/s fp16 dense (datasheet) x 0.70.
H100_MHA = HardwareSpec(
    "H100 (32 KV heads)", memory_bandwidth=2.952e12, matrix_flops=MATMUL_EFFICIENCY * 989e12,
    attention_bandwidth=2.979e12, paged_attention_bandwidth=3.028e12, memory_bytes=80 * GiB,
    source="benchmarks/results/bench_h100_lead_final.log (kernel v4, Hkv=32 rows)",
)
H100_GQA = HardwareSpec(
    "H100 (8 KV heads)", memory_bandwidth=2.952e12, matrix_flops=MATMUL_EFFICIENCY * 989e12,
    attention_bandwidth=2.668e12, paged_attention_bandwidth=2.273e12, memory_bytes=80 * GiB,
    source="benchmarks/results/bench_h100_lead_final.log (kernel v4, Hkv=8 rows)",
)
#: H200 (141 GB HBM3e): benchmarks/results/h200_call4_bench4.log (bench_kernels.py with kernel v6, the lead's
#: H200 run recorded in commit 82b04a9): device copy 4.125 TB/s; B=64 L=4096 Hq=32 Hkv=8: paged_attention (auto)
#: 3.246 TB/s, torch SDPA over contiguous K/V 3.995 TB/s. Same tensor cores as the H100.
H200_GQA = HardwareSpec(
    "H200 (8 KV heads)", memory_bandwidth=4.125e12, matrix_flops=MATMUL_EFFICIENCY * 989e12,
    attention_bandwidth=3.995e12, paged_attention_bandwidth=3.246e12, memory_bytes=141 * GiB,
    source="benchmarks/results/h200_call4_bench4.log (kernel v6, Hkv=8 rows)",
)

#: Seconds of host work per iteration in the paper's setting: the one *fitted* figure. On Alpaca at
#: 30 req/s, paged memory is (nearly) never full, so its mean batch (132.44 requests, paper Fig. 13b) is
#: set by how long an iteration takes (Little's law: batch = rate x output tokens x seconds per token).
#: 22 ms puts the simulated batch, averaged over time, at 131.6 (mean of seeds 0-4 with 3,000 requests;
#: 117-140 from seed to seed); every other figure the simulator gives is then a prediction. Host time of
#: this size is what vLLM's authors measured before their v0.6 rewrite: for Llama-3-8B on an H100, the
#: GPU worked only 38% of the time (vLLM blog, 2024-09-05, "vLLM v0.6.0: 2.7x Throughput Improvement and
#: 5x Latency Reduction").
PAPER_OVERHEAD = 0.022
#: Host overhead of the H100 / H200 presets: the same 38% GPU share (vLLM blog above) around a Llama-3-8B
#: decode step's 5-9 ms of GPU time on an H100 (the weights alone take 5.4 ms) gives about 10 ms.
MODERN_OVERHEAD = 0.010

TIME_MODELS: dict[str, RooflineTime | ConstantTime] = {
    "opt-13b-a100": RooflineTime(
        "opt-13b-a100", OPT_13B, A100_40GB, PAPER_OVERHEAD, kv_capacity_tokens=int(12 * GiB // (2 * 40 * 5120 * 2)),
        note="the vLLM paper's main setting: 12 GiB of KV cache (15,728 tokens); overhead fitted to Fig. 13b",
    ),
    "opt-13b-h100": RooflineTime(
        "opt-13b-h100", OPT_13B, H100_MHA, MODERN_OVERHEAD, kv_capacity_tokens=kv_capacity(H100_MHA, OPT_13B),
        note="OPT-13B on one H100 80GB; KV capacity as vLLM sizes it (0.9 of memory, 2 GiB of activations)",
    ),
    "llama3-8b-h100": RooflineTime(
        "llama3-8b-h100", LLAMA3_8B, H100_GQA, MODERN_OVERHEAD, kv_capacity_tokens=kv_capacity(H100_GQA, LLAMA3_8B),
        note="Llama-3-8B on one H100 80GB; attention speeds measured by this project at 8 KV heads",
    ),
    "llama3-8b-h200": RooflineTime(
        "llama3-8b-h200", LLAMA3_8B, H200_GQA, MODERN_OVERHEAD, kv_capacity_tokens=kv_capacity(H200_GQA, LLAMA3_8B),
        note="Llama-3-8B on one H200 141GB; attention speeds measured by this project at 8 KV heads",
    ),
    "constant-40ms": ConstantTime(0.04, name="constant-40ms"),
}
#: The preset the simulator uses unless told otherwise.
DEFAULT_TIME_MODEL = "opt-13b-a100"


def get_time_model(name_or_path: str) -> RooflineTime | ConstantTime:
    """A preset by name, ``constant-<ms>ms`` for any constant, or a JSON file (see :func:`load_time_model`)."""
    if not isinstance(name_or_path, str):
        raise InvalidArgumentError(f"a time model is named by a string, got {name_or_path!r}")
    if name_or_path in TIME_MODELS:
        return TIME_MODELS[name_or_path]
    if name_or_path.startswith("constant-") and name_or_path.endswith("ms"):
        try:
            ms = float(name_or_path[len("constant-") : -2])
        except ValueError:
            ms = math.nan
        return ConstantTime(ms / 1000, name=name_or_path)  # checks that it is positive
    if name_or_path.endswith(".json"):
        return load_time_model(name_or_path)
    raise InvalidArgumentError(
        f"unknown time model {name_or_path!r}; choose one of {', '.join(TIME_MODELS)}, "
        "constant-<ms>ms, or a preset file ending in .json"
    )


def time_model_from_json(obj: object) -> RooflineTime:
    """Build a :class:`RooflineTime` from a dict shaped like :meth:`RooflineTime.to_json`'s output.

    Every field is checked; a missing, unknown or impossible one raises
    :class:`InvalidArgumentError` naming it (``model.layers``...).
    """
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"a time model must be a JSON object, got {type(obj).__name__}")

    def build(cls: type, data: object, where: str) -> object:
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"{where} must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidArgumentError(f"unknown field {where}{unknown[0]!r}; the fields are {', '.join(names)}")
        optional = {f.name for f in fields(cls) if not (f.default is MISSING and f.default_factory is MISSING)}
        missing = [n for n in names if n not in data and n not in optional]
        if missing:
            raise InvalidArgumentError(f"missing field {where}{missing[0]}")
        for key in ("name", "source", "note"):
            if key in data and not isinstance(data[key], str):
                raise InvalidArgumentError(f"{where}{key} must be a string, got {data[key]!r}")
        return cls(**data)

    data = dict(obj)
    for key, cls in (("model", ModelSpec), ("hardware", HardwareSpec)):
        if key not in data:
            raise InvalidArgumentError(f"missing field {key}")
        data[key] = build(cls, data[key], f"{key}.")
    return build(RooflineTime, data, "")  # type: ignore[return-value]


def load_time_model(path: str | Path) -> RooflineTime:
    """Read a time model written as JSON (the shape of :meth:`RooflineTime.to_json`).

    Raises :class:`InvalidArgumentError` naming the file and the problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        obj = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidArgumentError(f"cannot read the time model {path}: {exc}") from None
    try:
        return time_model_from_json(obj)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{path}: {exc}") from None
    except TypeError as exc:  # a dataclass refusing its arguments: keep it ours
        raise InvalidArgumentError(f"{path}: {exc}") from None


#: Where ``docs/concepts/serving-time.md`` wants the presets table; the docs build fills it in.
PRESETS_TABLE_MARKER = "<!-- time-model-presets -->"


def presets_markdown() -> str:
    """The presets as a Markdown table (the docs page shows it, so it cannot drift from the code)."""
    lines = [
        ("| preset | model | GPU | weights | KV per token | stream | matrix | attention contiguous / paged "
         "| overhead | KV capacity |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in TIME_MODELS.items():
        if isinstance(t, ConstantTime):
            lines.append(f"| `{name}` | any | any | | | | | | {1000 * t.seconds:g} ms per step, always "
                         f"| {t.kv_capacity_tokens:,} |")
            continue
        m, h = t.model, t.hardware
        lines.append(
            f"| `{name}` | {m.name} | {h.name} | {m.param_bytes / 1e9:.1f} GB | {m.kv_bytes_per_token / 1024:g} KiB "
            f"| {h.memory_bandwidth / 1e12:.2f} TB/s | {h.matrix_flops / 1e12:.0f} TFLOP/s "
            f"| {h.attention_bandwidth / 1e12:.2f} / {h.paged_attention_bandwidth / 1e12:.2f} TB/s "
            f"| {1000 * t.overhead:g} ms | {t.kv_capacity_tokens:,} |"
        )
    return "\n".join(lines) + "\n"

