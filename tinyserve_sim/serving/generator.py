"""Serving workloads, reproducible from a seed.

A *workload* is a list of requests, each with an arrival time, a prompt length
and one output length per sequence it will generate. The same ``WorkloadSpec``
and seed always give the same requests, on every machine, so a claim measured
on a workload can be re-measured by anyone.

Arrivals
    Poisson: the gaps between arrivals are exponential with mean ``1 / rate``
    seconds. ``rate=inf`` puts every request at time 0, which keeps the server
    saturated (a request is always waiting); that is the setting in which the
    vLLM paper measures memory waste.

Lengths
    The vLLM paper (Kwon et al., SOSP 2023, Fig. 11) gives only the *means* of
    its two datasets: ShareGPT 161.31 input / 337.99 output tokens, Alpaca
    19.31 / 58.45. We draw each length from a **log-normal** distribution:
    lengths are positive and right-skewed (most answers are short, a few are
    very long), which is what the paper's histograms show, and a log-normal is
    the simplest two-parameter family with that shape. The spread ``sigma`` is
    our assumption (the paper gives none); the location ``mu`` is *calibrated*
    so that the mean after clipping still equals the paper's mean. Prompts are
    clipped to ``[1, max_len // 2]`` and outputs to ``[1, max_len - prompt]``,
    as vLLM's benchmark filters long requests, so that no request exceeds the
    model's maximum length (2,048 tokens for the paper's OPT models).

Parallel sampling and beam search
    ``n > 1`` asks for ``n`` samples of one prompt, each with its own output
    length. ``beam_width > 1`` runs beam search: ``beam_width`` beams that all
    stop at the same length. Both let a paged manager share the prompt's
    blocks (paper §4.4); the scheduler measures how much that saves.

Shared system prompt
    ``system_prompt_len > 0`` starts every prompt with the same tokens. With
    prefix caching on, a paged manager stores them once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from tinyserve_sim.errors import InvalidArgumentError

#: Token id used for the shared system prompt's tokens (any fixed ids would do).
SYSTEM_TOKEN_BASE = 1_000_000
#: Limits of a workload spec: beyond them a run would not fit in memory or in a lifetime.
MAX_REQUESTS = 10_000_000
MAX_WIDTH = 64  # samples or beams per request
MAX_LEN = 1_000_000  # tokens per sequence (request ids keep 10,000,000 token ids apart)
#: The latest arrival time, in seconds (about 32 years). Below it a float64 time still
#: resolves microseconds, the precision of the step logs; a tiny rate spreads its
#: arrivals past it (rate=1e-300: 1e300 seconds between arrivals) and is refused.
MAX_ARRIVAL_TIME = 1e9


@dataclass(frozen=True)
class LengthPreset:
    """Length distributions that approximate one dataset of the vLLM paper.

    Attributes:
        name: the preset's name.
        mean_prompt, mean_output: target means in tokens (paper, Fig. 11).
        sigma_prompt, sigma_output: log-normal spreads (our assumption).
        source: where the means come from.
    """

    name: str
    mean_prompt: float
    mean_output: float
    sigma_prompt: float
    sigma_output: float
    source: str


#: The two datasets of the vLLM paper. Sigmas are assumptions (see the module doc).
PRESETS: dict[str, LengthPreset] = {
    "sharegpt": LengthPreset("sharegpt", 161.31, 337.99, 1.0, 0.9, "vLLM paper, Fig. 11a"),
    "alpaca": LengthPreset("alpaca", 19.31, 58.45, 0.6, 0.8, "vLLM paper, Fig. 11b"),
}


@dataclass(frozen=True)
class Request:
    """One request of a workload.

    Attributes:
        req_id: 0-based index in the workload.
        arrival: arrival time in seconds.
        prompt_len: prompt tokens (including the shared system prompt, if any).
        output_lens: tokens each sequence of the request will generate (one
            entry per sample or beam).
        beam_width: 1 for sampling, the number of beams for beam search.
        system_prompt_len: leading prompt tokens shared by every request.
    """

    req_id: int
    arrival: float
    prompt_len: int
    output_lens: tuple[int, ...]
    beam_width: int = 1
    system_prompt_len: int = 0

    @property
    def num_seqs(self) -> int:
        """How many sequences the request runs (samples or beams)."""
        return len(self.output_lens)

    def final_len(self, i: int = 0) -> int:
        """Tokens sequence ``i`` holds when it finishes: prompt + its output."""
        return self.prompt_len + self.output_lens[i]

    def prompt_ids(self) -> list[int]:
        """Token ids of the prompt: the shared system prompt, then tokens unique to this request.

        Only needed for prefix caching, where equal ids mean equal content.
        """
        shared = [SYSTEM_TOKEN_BASE + i for i in range(self.system_prompt_len)]
        own_start = (self.req_id + 1) * 10_000_000  # disjoint from every other request's ids
        return shared + [own_start + i for i in range(self.prompt_len - self.system_prompt_len)]


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that defines a workload; with the seed it fixes every request.

    Attributes:
        dataset: a key of :data:`PRESETS`.
        num_requests: how many requests.
        rate: mean arrivals per second (``math.inf``: all at time 0).
        n: samples per request (parallel sampling).
        beam_width: beams per request (beam search); ``n`` and ``beam_width``
            cannot both exceed 1.
        system_prompt_len: tokens of a system prompt every request starts with.
        max_len: the model's maximum sequence length (prompt + output).
        seed: the random seed.
    """

    dataset: str = "sharegpt"
    num_requests: int = 1000
    rate: float = math.inf
    n: int = 1
    beam_width: int = 1
    system_prompt_len: int = 0
    max_len: int = 2048
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first impossible field."""
        if not isinstance(self.dataset, str) or self.dataset not in PRESETS:
            raise InvalidArgumentError(f"unknown dataset {self.dataset!r}; choose one of {sorted(PRESETS)}")
        for name, low, high in (
            ("num_requests", 1, MAX_REQUESTS),
            ("n", 1, MAX_WIDTH),
            ("beam_width", 1, MAX_WIDTH),
            ("max_len", 4, MAX_LEN),
            ("system_prompt_len", 0, MAX_LEN),
            ("seed", 0, 2**63 - 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise InvalidArgumentError(f"{name} must be a whole number in [{low}, {high:,}], got {value!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not self.rate > 0:
            raise InvalidArgumentError(f"rate must be a positive number of requests/s (or inf), got {self.rate!r}")
        if self.n > 1 and self.beam_width > 1:
            raise InvalidArgumentError("at most one of n and beam_width may exceed 1")
        if not self.system_prompt_len < self.max_len // 2:
            raise InvalidArgumentError(
                f"system_prompt_len must be below max_len // 2 = {self.max_len // 2}, got {self.system_prompt_len}"
            )


@dataclass
class Workload:
    """A spec and the requests it generated."""

    spec: WorkloadSpec
    requests: list[Request] = field(default_factory=list)

    def mean_prompt(self) -> float:
        return float(np.mean([r.prompt_len for r in self.requests]))

    def mean_output(self) -> float:
        return float(np.mean([o for r in self.requests for o in r.output_lens]))

    def to_json(self) -> dict:
        """A JSON-friendly dict (spec and requests); :func:`workload_from_json` reads it back."""
        spec = asdict(self.spec)
        spec["rate"] = "inf" if math.isinf(self.spec.rate) else self.spec.rate
        return {"spec": spec, "requests": [asdict(r) for r in self.requests]}


def workload_from_json(obj: dict) -> Workload:
    """Rebuild a workload written by :meth:`Workload.to_json`.

    Anything else raises :class:`InvalidArgumentError` (never a ``KeyError`` or ``TypeError``).
    """
    try:
        spec = dict(obj["spec"])
        spec["rate"] = float(spec["rate"])
        requests = [Request(**{**r, "output_lens": tuple(r["output_lens"])}) for r in obj["requests"]]
        workload = Workload(WorkloadSpec(**spec), requests)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgumentError(f"not a workload written by Workload.to_json ({type(exc).__name__}: {exc})") from None
    workload.spec.check()
    return workload


# ------------------------------------------------------------------ lengths
def _draw_lengths(rng: np.random.Generator, mu: float, sigma: float, size: int, cap: np.ndarray | int) -> np.ndarray:
    """Log-normal draws, rounded to whole tokens and clipped to ``[1, cap]``."""
    raw = rng.lognormal(mu, sigma, size)
    return np.clip(np.rint(raw), 1, cap).astype(np.int64)


@functools.lru_cache(maxsize=None)
def calibrate_mu(target_mean: float, sigma: float, cap: int, prompt_mu: float = math.nan,
                 prompt_sigma: float = 0.0, prompt_cap: int = 0) -> float:
    """The log-normal ``mu`` whose rounded, clipped draws have mean ``target_mean``.

    Without clipping, ``mu = ln(mean) - sigma**2 / 2``. Clipping lowers the mean,
    so we search ``mu`` by bisection on a fixed sample (seed 12345, 100,000 draws).
    For outputs the cap depends on each prompt (``max_len - prompt``): pass the
    prompt distribution and ``cap`` is then the total maximum length.
    """
    rng = np.random.default_rng(12345)
    size = 100_000
    unit = rng.standard_normal(size)
    caps: np.ndarray | int = cap
    if not math.isnan(prompt_mu):
        prompts = np.clip(np.rint(np.exp(prompt_mu + prompt_sigma * rng.standard_normal(size))), 1, prompt_cap)
        caps = cap - prompts

    def mean_for(mu: float) -> float:
        return float(np.mean(np.clip(np.rint(np.exp(mu + sigma * unit)), 1, caps)))

    low, high = math.log(target_mean) - sigma**2 / 2 - 2.0, math.log(target_mean) + 3.0
    for _ in range(60):  # bisection: mean_for is increasing in mu
        mid = (low + high) / 2
        if mean_for(mid) < target_mean:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def generate(spec: WorkloadSpec) -> Workload:
    """Generate the workload ``spec`` describes (same spec and seed, same requests).

    Raises :class:`InvalidArgumentError` for an impossible spec, or for a rate so low
    that the last arrival comes after :data:`MAX_ARRIVAL_TIME`.
    """
    spec.check()
    preset = PRESETS[spec.dataset]
    rng = np.random.default_rng(spec.seed)
    count = spec.num_requests
    prompt_cap = spec.max_len // 2
    mu_p = calibrate_mu(preset.mean_prompt, preset.sigma_prompt, prompt_cap)
    mu_o = calibrate_mu(preset.mean_output, preset.sigma_output, spec.max_len, mu_p, preset.sigma_prompt, prompt_cap)

    # Arrival times: cumulative sums of exponential gaps (a Poisson process).
    if math.isinf(spec.rate):
        arrivals = np.zeros(count)
    else:
        arrivals = np.cumsum(rng.exponential(1.0 / spec.rate, count))
        if not arrivals[-1] <= MAX_ARRIVAL_TIME:  # NaN and inf included
            raise InvalidArgumentError(
                f"rate {spec.rate:g} requests/s spreads {count:,} arrivals over {arrivals[-1]:.3g} s; "
                f"the last arrival must come within {MAX_ARRIVAL_TIME:g} s (about 32 years): use a higher rate"
            )

    prompts = _draw_lengths(rng, mu_p, preset.sigma_prompt, count, prompt_cap)
    # The system prompt is part of the prompt: make room for at least one own token.
    prompts = np.maximum(prompts, spec.system_prompt_len + 1)
    width = max(spec.n, spec.beam_width)
    outputs = _draw_lengths(rng, mu_o, preset.sigma_output, count * width, np.repeat(spec.max_len - prompts, width))
    outputs = outputs.reshape(count, width)

    requests = []
    for i in range(count):
        if spec.beam_width > 1:
            lens = (int(outputs[i, 0]),) * spec.beam_width  # beams finish together
        else:
            lens = tuple(int(x) for x in outputs[i])
        requests.append(
            Request(i, float(arrivals[i]), int(prompts[i]), lens, spec.beam_width, spec.system_prompt_len)
        )
    return Workload(spec, requests)
