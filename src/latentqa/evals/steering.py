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

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from latentqa.models import EMBEDDED_MODEL
from latentqa.steer.evaluation import Log, run_lit, vector_settings, vector_steered
from latentqa.steer.vector import tune_setting

if TYPE_CHECKING:
    import torch
    from torch import nn

    from latentqa.evals.all import SuiteContext
    from latentqa.steer.control import QAPair
    from latentqa.steer.model import SteerableModel


@dataclass
class SteeringEvalOptions:
    """Options every steering evaluation shares. Unknown options are errors."""

    target: str = EMBEDDED_MODEL
    """Target model to steer."""
    decoder: str | None = None
    """Decoder folder; default: the decoder shipped for the target."""
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
    seed: int = 0
    """Seed for the item split and the LoRA initialisation."""
    out: str | None = None
    """Folder to keep the LIT adapters in (not kept when unset)."""
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
        lit: Per direction, LIT's ``{"initial_loss", "final_loss"}``.
    """

    measured: dict[str, Any] = field(default_factory=dict)
    vector: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    lit: dict[str | None, dict[str, float]] = field(default_factory=dict)


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


def run_steering(task: SteeringTask, log: Log | None = None) -> SteeringResult:
    """Run none -> prompting -> steering vector -> LIT for every direction of ``task``.

    The steering is removed from the target afterwards.
    """
    say = log or (lambda _message: None)
    steerable, options = task.steerable, task.options
    run = SteeringRun()
    with steerable.unsteered() as model:
        run.measured["none"] = task.measure(model, None)
    task.prepare()  # not nested: its own measures toggle the adapters
    layers = list(getattr(options, "vector_layers", None) or [steerable.n_layers // 3])
    vectors = task.vectors(layers)
    coefficients = getattr(options, "coefficients", None) or task.default_coefficients
    settings = vector_settings(layers, coefficients)
    for direction in task.directions:
        with steerable.unsteered() as model:
            run.measured[_method("prompting", direction)] = task.measure(model, direction, True)
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
        run.lit[direction] = run_lit(
            steerable,
            task.control(direction),
            task.lit_prompts(),
            options,
            task.lit_name(direction),
            log=say,
        )
        with steerable.steered() as model:
            run.measured[_method("lit", direction)] = task.measure(model, direction)
    steerable.remove_steering()
    return task.result(run)


@dataclass(frozen=True)
class SteeringEvaluation:
    """A steering evaluation as the CLI and ``latentqa eval all`` see it.

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
        return self.evaluate(config, log=ctx.log).to_json()
