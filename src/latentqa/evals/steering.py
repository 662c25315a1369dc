"""The steering evaluations' shared runner (``sentiment``, ``crows-pairs``, ``audit``).

Every steering evaluation compares, on the same held-out items, the unsteered target
(``none``), a system prompt asking for the behaviour (``prompting``), optionally a
tuned steering vector (``vector``) and LIT steering (``lit``: the target's LoRA trained
with the decoder's loss on a control). :func:`run_steering` runs that loop once for
every task; a task (a :class:`SteeringTask`) supplies only its directions, controls,
prompting, vector pairs and measure, and turns the measurements into a
:class:`SteeringResult`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from latentqa.evals.registry import Evaluation
from latentqa.evals.steering_methods import Log, run_lit, vector_settings, vector_steered
from latentqa.models import EMBEDDED_MODEL
from latentqa.steer.config import SteerConfig
from latentqa.steer.encoding import own_replies, steering_reads
from latentqa.steer.vector import tune_setting

if TYPE_CHECKING:
    import torch
    from torch import nn

    from latentqa.evals.registry import SuiteContext
    from latentqa.steer.model import SteerableModel
    from latentqa.steer.qa_pairs import QAPair


@dataclass
class SteeringEvalOptions:
    """Options every steering evaluation shares. Unknown options are errors."""

    target: str = EMBEDDED_MODEL
    """Target model to steer."""
    decoder: str | None = None
    """Decoder folder or shipped:NAME; default: shipped:control for the embedded target."""
    steps: int = 40
    """LIT steering steps (per direction or behaviour)."""
    lr: float = 1e-3
    """LIT steering learning rate."""
    batch_size: int = 4
    """Prompts per LIT steering step."""
    lora_r: int = 8
    """Rank of the steering LoRA (alpha = 2 r)."""
    layers: list[int] | None = None
    """Target layers adapted by LIT; default: up to the deepest read layer."""
    read_layers: list[int] | None = None
    """Layers the decoder reads while steering; default: the decoder's."""
    read: str = "auto"
    """What LIT steering reads: prompt, reply (the target's unsteered replies, or the
    task's own sentences) or auto (reply for decoders trained on replies)."""
    seed: int = 0
    """Seed for the item split and the LoRA initialisation."""
    out: str | None = None
    """Folder for the table (<task>.md), JSON, PNG and the LIT adapters (none kept when
    unset)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N."""
    dtype: str = "float32"
    """Frozen weights' dtype."""


@dataclass
class VectorEvalOptions(SteeringEvalOptions):
    """Options of a steering evaluation that also tunes a steering-vector baseline."""

    vector_layers: list[int] | None = None
    """Candidate steering-vector layers (tuned with the coefficient); default: a third of
    the depth."""
    coefficients: list[float] | None = None
    """Candidate steering-vector coefficients; default: the evaluation's."""
    max_ppl_ratio: float = 1.5
    """Fluency limit in tuning and in the target check: perplexity / unsteered."""
    lit_strengths: list[float] | None = dataclasses.field(
        default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 1.0]
    )
    """Candidate strengths of the LIT adapter (its LoRA output scaled; 1 = as trained),
    tuned like the vector's coefficient on the same prompts under the same fluency limit;
    empty: use it as trained."""


@dataclass
class SteeringResult:
    """A steering evaluation's figures; :meth:`to_json` is its ``--json`` object.

    Attributes:
        task: The evaluation's name.
        n: Held-out items measured.
        methods: Method name -> metrics.
        lit: LIT steering losses (per direction, or one for a single control).
        config: The evaluation's options.
        by_bias_type: Per method, a metric per bias type (CrowS-Pairs only).
        checks: Whether the evaluation's target is met, and the figures behind it.
        vector: The tuned steering-vector setting and every trial.
        samples: A few replies per method.
        per_item: Per method, one value per held-out item (sentiment: each reply's VADER
            compound), for the distribution plot.
    """

    task: str
    n: int
    methods: dict[str, Any]
    lit: dict[str, Any]
    config: dict[str, Any]
    by_bias_type: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None
    vector: dict[str, Any] | None = None
    samples: dict[str, Any] | None = None
    per_item: dict[str, list[float]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready object, keys in the order the commands have always printed."""
        order = (
            "task",
            "n",
            "methods",
            "by_bias_type",
            "checks",
            "vector",
            "lit",
            "samples",
            "per_item",
            "config",
        )
        values = {name: getattr(self, name) for name in order}
        return {k: v for k, v in values.items() if v is not None or k in ("task", "n")}


@dataclass
class SteeringRun:
    """What :func:`run_steering` measured, for the task to turn into a result.

    Attributes:
        measured: ``none``, then ``prompting``, ``vector`` and ``lit`` per direction
            (named ``"<method> <direction>"``, or ``"<method>"`` for a single control),
            each the task's :meth:`SteeringTask.measure` output.
        vector: Per direction, the tuned ``{"layer", "coefficient", "trials"}``.
        lit: Per direction, LIT's ``{"initial_loss", "final_loss"}`` and, where tuned,
            its ``strength`` and every ``trials`` entry ``[strength, score, fluent]``.
    """

    measured: dict[str, Any] = field(default_factory=dict)
    vector: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    lit: dict[str | None, dict[str, Any]] = field(default_factory=dict)


class SteeringTask(ABC):
    """One steering evaluation: its directions, controls, prompting, vectors and measure.

    Attributes:
        name: Task name (``latentqa eval NAME``).
        steerable: The target with its decoder adapter.
        options: The evaluation's options.
        directions: Controls to steer toward; ``(None,)`` for a single control, whose
            method names carry no direction.
        default_coefficients: Steering-vector coefficients tried when the options give none.
    """

    name: str
    directions: Sequence[str | None] = (None,)
    default_coefficients: Sequence[float] = (1.0,)

    def __init__(self, steerable: SteerableModel, options: SteeringEvalOptions) -> None:
        self.steerable, self.options = steerable, options

    @abstractmethod
    def measure(self, model: nn.Module, direction: str | None, prompted: bool = False) -> Any:
        """Measure ``model`` on the held-out items (with the prompting baseline if asked)."""

    @abstractmethod
    def control(self, direction: str | None) -> Sequence[QAPair]:
        """The control LIT steers toward."""

    @abstractmethod
    def lit_name(self, direction: str | None) -> str:
        """Name of the LIT adapter's folder under ``options.out``."""

    @abstractmethod
    def lit_prompts(self) -> list[str]:
        """Prompts the LIT steering reads the target on."""

    def lit_items(self, read: str) -> tuple[list[str], list[str] | None]:
        """``(prompts, replies)`` LIT steering reads; replies ``None``: the target's own
        (read ``reply``) or none (read ``prompt``). Default: :meth:`lit_prompts`."""
        return self.lit_prompts(), None

    @abstractmethod
    def result(self, run: SteeringRun) -> SteeringResult:
        """The task's result from what the runner measured."""

    def prepare(self) -> None:
        """Work after the unsteered measure (e.g. the tuning limit); default: nothing."""
        return None

    def vectors(self, layers: Sequence[int]) -> dict[int, torch.Tensor] | None:
        """Per layer, the steering vector (toward the first direction); ``None``: no
        vector baseline."""
        return None

    def sign(self, direction: str | None) -> float:
        """The steering vector's sign for ``direction``."""
        return 1.0

    def tune_measure(self, model: nn.Module) -> Any:
        """Measure a steered ``model`` on the tuning items (inside the steering)."""
        raise NotImplementedError

    def tune_score(self, measured: Any, direction: str | None) -> tuple[float, bool]:
        """``(score, fluent)`` of a tuning measure, higher scores better (outside it)."""
        raise NotImplementedError


def _method(method: str, direction: str | None) -> str:
    return method if direction is None else f"{method} {direction}"


def run_steering(
    task: SteeringTask, log: Log | None = None, progress: bool = True
) -> SteeringResult:
    """Run none -> prompting -> steering vector -> LIT for every direction of ``task``.

    A progress bar (``progress``) counts these stages. The steering is removed from the
    target afterwards.
    """
    say = log or (lambda _message: None)
    steerable, options = task.steerable, task.options
    run = SteeringRun()
    bar = tqdm(desc=task.name, disable=not progress)
    with steerable.unsteered() as model:
        run.measured["none"] = task.measure(model, None)
    bar.update(1)
    task.prepare()  # not nested: its own measures toggle the adapters
    layers = list(getattr(options, "vector_layers", None) or [steerable.n_layers // 3])
    vectors = task.vectors(layers)
    # Stages: the unsteered measure, then per direction prompting, the vector (if any), LIT.
    bar.total = 1 + (2 if vectors is None else 3) * len(task.directions)
    bar.refresh()
    # What LIT reads is the same for every direction: the target's own replies once.
    read = steering_reads(steerable, options.read)
    lit_prompts, lit_replies = task.lit_items(read)
    if read == "reply" and lit_replies is None:
        lit_replies = own_replies(steerable, lit_prompts, SteerConfig.reply_tokens)
    coefficients = getattr(options, "coefficients", None) or task.default_coefficients
    settings = vector_settings(layers, coefficients)
    for direction in task.directions:
        bar.set_postfix_str(f"prompting {direction or ''}".strip())
        with steerable.unsteered() as model:
            run.measured[_method("prompting", direction)] = task.measure(model, direction, True)
        bar.update(1)
        if vectors is not None:
            sign = task.sign(direction)

            def trial(setting: tuple[int, float], sign: float = sign, direction=direction):
                layer, c = setting
                with vector_steered(steerable, layer, vectors[layer], sign * c) as model:
                    measured = task.tune_measure(model)
                return task.tune_score(measured, direction)

            say(
                f"{_method(task.name, direction)}: tuning the steering vector over "
                f"{len(settings)} settings"
            )
            (layer, c), trials = tune_setting(trial, settings)
            run.vector[direction] = {
                "layer": layer,
                "coefficient": c,
                "trials": [[*s, score, ok] for s, score, ok in trials],
            }
            with vector_steered(steerable, layer, vectors[layer], sign * c) as model:
                run.measured[_method("vector", direction)] = task.measure(model, direction)
            bar.update(1)
        bar.set_postfix_str(f"LIT {direction or ''}".strip())
        run.lit[direction] = run_lit(
            steerable,
            task.control(direction),
            lit_prompts,
            options,
            task.lit_name(direction),
            log=say,
            replies=lit_replies,
        )
        strength = 1.0
        strengths = getattr(options, "lit_strengths", None)
        if vectors is not None and strengths:
            # LIT's strength is tuned like the vector's coefficient: same prompts, same limit.
            def lit_trial(value: float, direction=direction) -> tuple[float, bool]:
                with steerable.steered_at(value) as model:
                    measured = task.tune_measure(model)
                return task.tune_score(measured, direction)

            say(f"{_method(task.name, direction)}: tuning LIT's strength over {strengths}")
            strength, trials = tune_setting(lit_trial, sorted(strengths))
            run.lit[direction]["strength"] = strength
            run.lit[direction]["trials"] = [[s, score, ok] for s, score, ok in trials]
        with steerable.steered_at(strength) as model:
            run.measured[_method("lit", direction)] = task.measure(model, direction)
        bar.update(1)
    bar.close()
    steerable.remove_steering()
    return task.result(run)


@dataclass(frozen=True)
class SteeringEvaluation:
    """What a steering evaluation adds to the shared command and suite runner.

    Attributes:
        name: Task name.
        config: Its options dataclass (a :class:`SteeringEvalOptions`).
        evaluate: ``evaluate(config, log=...) -> SteeringResult``.
        size: The option that ``latentqa eval all --n`` caps.
    """

    name: str
    config: type[SteeringEvalOptions]
    evaluate: Callable[..., SteeringResult]
    size: str

    def run(self, config: SteeringEvalOptions, log: Log) -> dict[str, Any]:
        """The command's result: the evaluation's ``--json`` object."""
        return self.evaluate(config, log=log).to_json()

    def report(self, result: dict[str, Any], config: SteeringEvalOptions, _log: Log) -> str:
        """The table and the checks; with ``--out``, the files written there, named."""
        from latentqa.evals.steering_report import command_report

        return command_report(result, config.out)

    def run_in_suite(self, ctx: SuiteContext) -> dict[str, Any]:
        """Entry point of ``latentqa eval all``: default sizes; ``ctx.n`` caps :attr:`size`.

        Uses the suite's target, the task's decoder, the device, seed and log.
        """
        sizes = {} if ctx.n is None else {self.size: ctx.n}
        config = self.config(
            target=ctx.target,
            decoder=ctx.decoder_for(self.name),
            device=ctx.device,
            seed=ctx.seed,
            **sizes,
        )
        result = self.evaluate(config, log=ctx.log).to_json()
        if getattr(ctx, "out", None) is not None:
            from latentqa.evals.steering_report import steering_plot

            png = f"{self.name}.png"
            if steering_plot(result, Path(ctx.out) / png):
                result["plots"] = [png]
        return result


def steering_evaluation(
    *,
    name: str,
    help: str,
    description: str,
    config: type[SteeringEvalOptions],
    evaluate: Callable[..., SteeringResult],
    size: str,
) -> Evaluation:
    """A steering evaluation's registry entry (see :class:`SteeringEvaluation`); its
    decoder in the suite, for the embedded target, is ``shipped:control``."""
    steering = SteeringEvaluation(name, config, evaluate, size)
    return Evaluation(
        name=name,
        help=help,
        description=description,
        config=config,
        run=steering.run,
        report=steering.report,
        suite=steering.run_in_suite,
        default_decoder="shipped:control",
    )
