"""Typed, validated run configuration (presets are YAML files of this schema).

A :class:`KielnetConfig` declares everything needed to train and apply a model:
which inputs are used and how they are preprocessed, which labels are learned and
how they are transformed and scaled, the network architecture, the optimiser and
the ensemble layout. It is stored verbatim in every model bundle, so a bundle is
self-describing.

Presets live in :mod:`kielnet.presets` as YAML files; :func:`load_config` accepts a
preset name or a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kielnet.errors import ConfigError
from kielnet.labels import LabelInfo, column_candidates, label_info

#: most labels a config may learn (each gets an 'outside training range' flag bit)
MAX_LABELS = 51

__all__ = [
    "ConvLayerConfig", "SpectrumBranchConfig", "ScalarBranchConfig", "HeadConfig", "ModelConfig",
    "FeatureConfig", "SpectrumPrepConfig", "LabelConfig", "WeightingConfig", "TrainingConfig",
    "EnsembleConfig", "UncertaintyConfig", "InferenceConfig", "ReportingRule", "InputChecksConfig",
    "KielnetConfig",
    "load_config",
]

Activation = Literal["relu", "leaky_relu", "gelu", "elu", "silu", "tanh"]
Scaling = Literal["zscore", "minmax", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConvLayerConfig(_Strict):
    """One 1-D convolution; ``pool`` > 1 adds a max-pool of that width after it."""

    channels: int = Field(gt=0)
    kernel: int = Field(gt=0)
    padding: int | Literal["same", "valid"] = "same"
    pool: int = Field(default=1, ge=1)


class SpectrumBranchConfig(_Strict):
    """Convolutional branch over the spectrum; ``dense`` layers follow the flatten."""

    conv: list[ConvLayerConfig]
    dense: list[int] = []
    activation: Activation = "relu"
    batchnorm: bool = False


class ScalarBranchConfig(_Strict):
    """A dense branch over a named group of scalar features (see :class:`FeatureConfig`)."""

    name: str
    features: list[str] = Field(min_length=1)
    layers: list[int] = Field(min_length=1)
    activation: Activation = "relu"


class HeadConfig(_Strict):
    """Fusion head: dense layers over the concatenated branch outputs, then the labels."""

    layers: list[int] = []
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    activation: Activation = "relu"


class ModelConfig(_Strict):
    spectrum: SpectrumBranchConfig | None = None
    scalar_branches: list[ScalarBranchConfig] = []
    head: HeadConfig = HeadConfig()
    init: Literal["default", "kaiming"] = Field(
        default="default",
        description="weight initialisation: torch's default, or Kaiming-normal (fan-in, zero "
                    "biases), which keeps the signal alive through deep ReLU conv stacks")
    channels_last_2d: bool = Field(
        default=True,
        description="run Conv1d as Conv2d with a 1xk kernel in channels_last layout (faster on CPU)")
    heteroscedastic: bool = Field(
        default=False,
        description="the network also outputs log sigma of each label (scaled units): a per-star "
                    "residual scale learned from the inputs (training.sigma_loss) by a sigma head "
                    "on the head's last hidden layer")
    sigma_head: list[int] = Field(default=[64], description="hidden widths of the sigma head")
    sigma_features: Literal["detached", "shared"] = Field(
        default="detached",
        description="'detached': the sigma head sees the head's last hidden layer detached from "
                    "the graph, so learning sigma never changes the layers the labels use (the "
                    "labels train exactly as without it); 'shared': its gradients reach them too")


class FeatureConfig(_Strict):
    """A scalar feature built from the star table's scalar columns.

    ``kind='column'`` uses ``columns[0]`` as is (e.g. a magnitude in mag, parallax in
    mas); ``kind='difference'`` uses ``columns[0] - columns[1]`` (a colour in mag);
    ``kind='ratio'`` uses ``columns[0] / columns[1]`` (e.g. an XP coefficient over the
    first coefficient of its set, Gaia-RVS §3.1). Features are scaled (``scaling``:
    z-score or min-max) with training statistics; missing values are imputed with
    the training mean and, when ``missing_indicator`` is on, an extra 0/1 input tells
    the network the value was missing. Every star with a missing feature is flagged.
    """

    name: str
    kind: Literal["column", "difference", "ratio"] = "column"
    columns: list[str] = Field(min_length=1, max_length=2)
    scaling: Literal["zscore", "minmax"] = "zscore"
    missing_indicator: bool = True
    invalid_above: float | None = Field(
        default=None, description="raw values >= this are survey placeholders (e.g. 98 for "
                                  "APOGEE's 99.999) and count as missing")
    missing_value: float | None = Field(
        default=None, description="raw value put in place of a missing one before scaling "
                                  "(APOGEE Net II's sentinel mode); None = training mean")
    fixed_scaling: tuple[float, float] | None = Field(
        default=None, description="(centre, scale) in raw units instead of fitted statistics")

    @model_validator(mode="after")
    def _check(self) -> "FeatureConfig":
        need = 1 if self.kind == "column" else 2
        if len(self.columns) != need:
            raise ValueError(f"feature '{self.name}' of kind {self.kind} needs {need} column(s)")
        return self


class SpectrumPrepConfig(_Strict):
    """Spectrum preprocessing steps, applied in this order.

    * ``normalise``: ``none`` or ``median`` (divide each spectrum by its median flux).
    * ``log``: take log10 of the (positive-clipped) flux.
    * ``standardise``: per-pixel z-score with training-set mean and scatter.
    * ``max_bad_fraction``: a spectrum with more non-finite pixels than this is not
      labelled (status ``bad_spectrum``); fewer bad pixels are repaired and counted.
    * ``bad_pixels``: how non-finite pixels are repaired — ``interpolate`` (linear in
      pixel index) or ``zero`` (set to 0, as the official APOGEE Net II code does).
    """

    normalise: Literal["none", "median"] = "none"
    log: bool = False
    standardise: bool = True
    max_bad_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    bad_pixels: Literal["interpolate", "zero"] = "interpolate"


class LabelConfig(_Strict):
    """A label to learn. ``transform='log10'`` learns log10 of the value (Teff).

    ``valid_range`` is the physical range (in the label's unit); reference labels
    outside it are treated as missing in training and reported.
    """

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
                      description="catalogue column name (letters, digits, underscores)")
    unit: str | None = Field(default=None, description="astropy unit string ('K', 'dex', 'mag', '' for none); "
                                                        "default: kielnet's built-in vocabulary for known names")
    display: str | None = Field(default=None, description="name on plot axes (mathtext allowed), e.g. '[Mg/Fe]'")
    description: str | None = Field(default=None, description="catalogue column description")
    aliases: list[str] = Field(default=[], description="other column names of this label in reference tables "
                                                       "(case-insensitive), e.g. [MG_FE, mgfe]")
    transform: Literal["none", "log10"] = "none"
    scaling: Scaling = "zscore"
    valid_range: tuple[float, float]
    fixed_scaling: tuple[float, float] | None = Field(
        default=None, description="(centre, scale) used instead of fitted statistics")

    @property
    def info(self) -> LabelInfo:
        """This label's entry in the label vocabulary (config fields over built-in defaults)."""
        return label_info(self.name, unit=self.unit, display=self.display, description=self.description,
                          aliases=tuple(self.aliases))

    @field_validator("valid_range")
    @classmethod
    def _order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("valid_range must be (low, high) with low < high")
        return v


class WeightingConfig(_Strict):
    """KDE inverse-density sample weights in the standardised plane of ``labels``
    (APOGEE Net II §3.2.1): w = min(c/d, cap·c), normalised to mean 1."""

    kind: Literal["none", "kde"] = "kde"
    labels: list[str] = ["teff", "logg"]
    bandwidth: float = Field(default=0.7671, gt=0)
    cap: float = Field(default=5.0, gt=0)


class TrainingConfig(_Strict):
    optimizer: Literal["adam", "adamw", "adamax", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=64, gt=0)
    max_epochs: int = Field(default=60, gt=0)
    patience: int = Field(default=10, gt=0)
    lr_patience: int = Field(default=4, gt=0)
    lr_factor: float = Field(default=0.5, gt=0, lt=1)
    min_lr: float = Field(default=1e-6, ge=0)
    schedule: Literal["plateau", "cosine"] = Field(
        default="plateau",
        description="learning-rate schedule: 'plateau' = ReduceLROnPlateau on the validation loss "
                    "(lr_patience, lr_factor); 'cosine' = linear warm-up over warmup_epochs, then a "
                    "cosine decay per epoch from lr to min_lr at max_epochs")
    warmup_epochs: int = Field(default=0, ge=0, description="epochs of linear warm-up ('cosine' schedule)")
    loss: Literal["mse", "huber", "l1"] = "mse"
    huber_delta: float = Field(default=1.0, gt=0,
                               description="'huber' loss: residual (scaled label units, i.e. label standard "
                                           "deviations) where the loss turns from quadratic to linear")
    ema_decay: float = Field(
        default=0.0, ge=0, lt=1,
        description="exponential moving average of the weights, updated after every optimiser step "
                    "with this decay (e.g. 0.999); validation, the best epoch and the member's weights "
                    "are those of the average (torch.optim.swa_utils). 0 = off")
    weighting: WeightingConfig = WeightingConfig()
    val_fraction: float = Field(default=0.25, gt=0, lt=1)
    noise_augmentation: float = Field(
        default=0.0, ge=0.0,
        description="add Gaussian noise of this many times the propagated flux errors to each "
                    "training spectrum at every step (0 = off)")
    threads: int = Field(default=0, ge=0, description="torch threads; 0 = torch default")
    sigma_loss: Literal["laplace", "nll", "beta_nll"] = Field(
        default="laplace",
        description="loss of the log-sigma outputs of a heteroscedastic model: 'laplace' (robust) or "
                    "'nll' (Gaussian) negative log-likelihood of the detached residual (the means "
                    "are trained by `loss` alone); 'beta_nll' = joint Gaussian beta-NLL (Seitzer et "
                    "al. 2022, beta = sigma_beta) that trains the means too")
    sigma_beta: float = Field(default=0.5, ge=0, le=1)
    input_dropout: float = Field(
        default=0.0, ge=0, lt=1,
        description="probability, per star, step and input group (config.input_groups), that the "
                    "group is hidden as if missing: members learn to label honestly without it")


class EnsembleConfig(_Strict):
    """Deep ensemble (Gaia-RVS §3.2): ``n_splits`` random train/validation splits
    (by star id) × ``members_per_split`` differently seeded models."""

    n_splits: int = Field(default=2, gt=0)
    members_per_split: int = Field(default=2, gt=0)
    seed: int = 0


class RecalibrationConfig(_Strict):
    """Post-hoc scale of σ fitted on out-of-fold stars only (validation stars of each split,
    predicted by that split's members): in each cell of ``label_bins`` quantile bins of the
    predicted label × ``snr_bins`` quantile bins of the star's S/N (``uncertainty.snr``), the
    factor that makes the fraction with |residual| < σ equal to ``target`` (1σ of a
    Gaussian by default). ``kind = none`` keeps σ as the terms give it.

    ``tails``: extra label-bin edges at these quantiles q and 1 − q of the predicted
    label (each q < 0.5 / ``label_bins``), so that the rare ends of a label (hot stars,
    very metal-poor stars) get their own factor instead of sharing the outermost
    equal-count bin with a much larger, better-predicted population."""

    kind: Literal["none", "binned"] = "binned"
    label_bins: int = Field(default=8, ge=1)
    tails: list[float] = Field(default_factory=list)
    snr_bins: int = Field(default=4, ge=1)
    min_per_cell: int = Field(default=100, ge=10)
    target: float = Field(default=0.6827, gt=0, lt=1)

    @model_validator(mode="after")
    def _check_tails(self) -> "RecalibrationConfig":
        outer = 1.0 / self.label_bins
        for q in self.tails:
            if not 0.0 < q < outer:
                raise ValueError(f"uncertainty.recalibration.tails: {q} must lie in (0, 1/label_bins = "
                                 f"{outer:.4g}) so that it splits the outermost bins")
        return self


class UncertaintyConfig(_Strict):
    """Total σ = model-to-model σ ⊕ running dispersion (Gaia-RVS §3.4): the robust
    dispersion of residuals in ``n_bins`` bins of each label, fitted with a polynomial
    of ``degree`` in that label.

    ``residuals``: ``heldout`` (kielnet's default) fits the residuals of each split's
    validation stars predicted by that split's members, which no member of the split
    trained on; ``training`` (the paper's: "the residual of CNN-APOGEE training labels")
    fits the whole ensemble's residuals on the training stars, which most members saw,
    so it is smaller. ``subtract_internal`` (default) fits only the part of the binned
    scatter that the members' spread does not already explain (so that internal ⊕
    running reproduces the observed scatter); the paper adds the two without it.
    """

    n_bins: int = Field(default=20, ge=3)
    degree: int = Field(default=3, ge=0)
    min_per_bin: int = Field(default=20, ge=5)
    residuals: Literal["heldout", "training"] = "heldout"
    subtract_internal: bool = True
    terms: list[Literal["spread", "running", "head"]] = Field(
        default=["spread", "running"],
        description="σ terms added in quadrature: the members' spread, the running dispersion "
                    "in the predicted label, the network's own σ output (model.heteroscedastic); "
                    "with inference.n_realisations > 1 the noise-realisation scatter is part of "
                    "the spread (law of total variance)")
    snr: str = Field(
        default="spectrum",
        description="the per-star S/N used by the recalibration: 'spectrum' (median flux / "
                    "flux error of the spectrum's pixels) or the name of a scalar column (e.g. "
                    "'g': then brighter = larger value is NOT assumed, bins are quantiles)")
    recalibration: RecalibrationConfig = RecalibrationConfig(kind="none")
    inflation: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="per label, sigma -> a * sigma + b applied last (label unit), e.g. Astra's documented "
                    "APOGEE Net II inflation {teff: [1.25, 10], logg: [1.25, 0.01], fe_h: [1.0, 0.01]}")
    missing_inputs: Literal["calibrate", "withhold", "flag"] = Field(
        default="calibrate",
        description="stars with missing scalar inputs: 'calibrate' scales σ by a factor fitted on "
                    "out-of-fold stars with the smallest input group (config.input_groups) that "
                    "covers the missing columns hidden; stars whose missing columns no group covers "
                    "get no labels; 'withhold' gives them no labels; 'flag' (before kielnet 0.4) "
                    "only sets the missing_input flag")


class InferenceConfig(_Strict):
    """How a bundle labels stars.

    ``n_realisations`` > 0 turns on APOGEE Net II's noise-realisation uncertainties
    (§3.2.3): each spectrum is re-drawn that many times as flux + N(0,1)·err with the
    errors clipped at ``clip_factor`` × the star's median error (scalar inputs are not
    perturbed); each member reports the median over realisations, and the
    realisation scatter is combined with the member spread (see
    :mod:`kielnet.inference.predict`).
    """

    n_realisations: int = Field(default=0, ge=0)
    clip_factor: float = Field(default=5.0, gt=0)
    seed: int = 0


class EmbeddingOODConfig(_Strict):
    """Fast out-of-distribution score (:mod:`kielnet.quality.embedding`): fitted when
    the ensemble is trained and stored in the bundle; ``predict`` then writes
    ``ood_score`` and sets the ``out_of_distribution`` flag where it exceeds 1."""

    enabled: bool = False
    max_reference: int = Field(default=20_000, ge=2, description="training stars kept as the reference")
    quantile: float = Field(default=0.99, gt=0, le=1, description="quantile of training NN distances = score 1")


class EnsembleSpreadConfig(_Strict):
    """Ensemble-disagreement score (:mod:`kielnet.quality.spread`): calibrated on the
    training stars when the ensemble is trained and stored in the bundle; ``predict``
    then writes ``spread_score`` and sets the ``ensemble_disagreement`` flag where it
    exceeds 1. A single-network "ensemble" has no disagreement: then it is skipped
    (the training log says so)."""

    enabled: bool = False
    max_reference: int = Field(default=20_000, ge=2, description="training stars used for the calibration")
    quantile: float = Field(default=0.90, gt=0, le=1,
                            description="quantile of the training stars' relative spread = score 1")
    local: bool = Field(default=False,
                        description="score 1 = that quantile among the quality.neighbours.k_local out-of-fold "
                                    "training stars nearest in predicted labels x S/N (each predicted by the "
                                    "members that did not train on it), not over all training stars: a star is "
                                    "flagged where the members disagree more than on stars predicted alike "
                                    "(it is kept by the neighbour model: with quality.neighbours disabled, or a "
                                    "single member per split, the threshold stays the one over all training "
                                    "stars)")


class TsneConfig(_Strict):
    """t-SNE training-likeness (Gaia-RVS §5.1, :mod:`kielnet.quality.tsne`).

    ``reference_size`` > 0 keeps that many randomly chosen training spectra (as the
    network sees them) in the bundle, so that ``predict`` can build t-SNE maps over
    them and the observed spectra without the training data.
    """

    reference_size: int = Field(default=0, ge=0)
    perplexities: list[float] = [30.0, 50.0, 75.0, 100.0]
    threshold_quantile: float = Field(default=0.99, gt=0, le=1)
    pca_components: int | None = Field(default=50, ge=1)


class BoundaryFlagConfig(_Strict):
    """The 8-digit ``flag_boundary`` column (Gaia-RVS §5.2, :mod:`kielnet.quality.boundary`).

    Digits 1-7 compare predicted labels, G and parallax with the training ranges
    stored in the bundle. Digit 8 (training-unlike) comes from ``training_like``:
    ``tsne`` (the paper's: maps over the bundle's t-SNE reference and the stars of
    each ``predict`` call or chunk) or ``fast_score`` (``ood_score`` > 1 or
    ``spread_score`` > 1, whichever the bundle has; no maps, scales to any number of
    stars).
    """

    enabled: bool = False
    training_like: Literal["tsne", "fast_score"] = "fast_score"


class SearchParam(_Strict):
    """One dimension of a tuning search: the config value at ``path`` (dotted, list items
    by index: ``training.lr``, ``model.spectrum.conv.0.channels``) drawn by Optuna as a
    float or int in [low, high] (``log`` = log-uniform; ``step`` for ints), or one of
    ``choices`` (any YAML values, e.g. whole layer lists)."""

    path: str = Field(min_length=1)
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = Field(default=None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "SearchParam":
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError(f"search parameter {self.path}: categorical needs 'choices'")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"search parameter {self.path}: {self.kind} needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError(f"search parameter {self.path}: log scale needs low > 0")
        return self


class TuningConfig(_Strict):
    """``kielnet tune``: an Optuna (TPE) search over ``space``. Each trial trains one
    network on the training stars' own split (``training.val_fraction``; never on stars
    held out from the tuning table) and scores it by ``objective`` on that split's
    validation stars: the mean over labels of the robust σ (1.4826 MAD) of the residuals
    in scaled units (comparable across losses and label transforms). Trials are pruned
    by Optuna's median rule on the same score, epoch by epoch, after ``warmup_epochs``."""

    space: list[SearchParam] = []
    n_trials: int = Field(default=20, gt=0)
    max_epochs: int | None = Field(default=None, gt=0, description="cap on each trial's epochs")
    max_stars: int | None = Field(default=None, gt=0, description="random subsample of the training "
                                                                     "stars per trial (speed)")
    pruner: Literal["median", "none"] = "median"
    warmup_epochs: int = Field(default=5, ge=0)
    startup_trials: int = Field(default=5, ge=0, description="trials before pruning starts")
    seed: int = 0


class InputChecksConfig(_Strict):
    """Physical-plausibility checks of inputs, measured against the training set
    (:mod:`kielnet.data.plausibility`).

    A spectrum that fails a test is flagged ``implausible_spectrum`` (the failed tests
    named in the catalogue's ``spectrum_issues``) and not labelled. A scalar input equal
    to a placeholder, or farther than ``span_margin`` × its training span outside its
    training range, is a missing value (flag ``missing_input``), never an input.
    """

    spectra: bool = Field(default=True, description="run the spectrum tests")
    nonpositive_margin: float = Field(default=0.25, ge=0, description="allowed excess fraction of pixels <= 0 "
                                                                      "(chip gaps written as 0 are tolerated)")
    flat_factor: float = Field(default=10.0, gt=1, description="scatter below training low / this = constant")
    scale_margin_dex: float = Field(default=1.0, gt=0, description="median |flux| this far (dex) outside "
                                                                   "the training range (unnormalised models)")
    spike_factor: float = Field(default=10.0, gt=1, description="robust peak deviation above training high x this")
    placeholders: list[float] = Field(
        default=[99.0, -99.0, 99.99, -99.99, 99.999, -99.999, 999.0, -999.0, 9999.0, -9999.0,
                 99999.0, -99999.0],
        description="scalar values that surveys write for 'no value' (e.g. 2MASS / APOGEE 99.999, -999)")
    span_margin: float = Field(default=2.0, gt=0, description="scalar values beyond the training range by "
                                                              "more than this x max(span, 1) are missing")


class NeighboursConfig(_Strict):
    """Label support, local σ calibration, 95 % intervals and the ``likely_outlier`` flag
    from the out-of-fold training stars nearest each star in predicted labels × S/N
    (:mod:`kielnet.quality.neighbours`). Fitted on out-of-fold stars when the ensemble
    is trained (or by ``kielnet calibrate``), stored in the bundle."""

    enabled: bool = False
    k_support: int = Field(default=50, ge=1, description="nearest stars that decide a label's support")
    min_support: float = Field(default=0.5, ge=0, le=1,
                               description="fraction of them that must carry the label for it to be reported")
    k_local: int = Field(default=150, ge=5, description="nearest stars of the local σ factor and outlier score")
    min_local: int = Field(default=30, ge=1, description="fewest neighbours with a residual for a local factor")
    local_calibration: bool = Field(default=True, description="multiply σ by the local factor")
    fit_to: Literal["1sigma", "1and2sigma"] = Field(
        default="1sigma", description="local factor: 68.27 % within 1 σ, or the best balance of the 1σ (±0.05) "
                                      "and 2σ (±0.03) coverage bands (heavy-tailed residuals)")
    tail: float = Field(default=3.0, gt=0, description="|residual| / local σ that counts as an outlier")
    outlier_budget: float = Field(default=0.0, ge=0, lt=1,
                                  description="fraction of out-of-fold stars the likely_outlier flag may take "
                                              "(its threshold is that quantile of their scores; 0 = no flag)")
    snr_weight: float = Field(default=1.0, gt=0, description="weight of log S/N against the scaled labels")


class TailRegimesConfig(_Strict):
    """Regimes of a predicted label where the out-of-fold training stars lie beyond
    ``tail`` σ more often than ``max_rate`` (:mod:`kielnet.quality.tails`): ``predict``
    withholds the label there (NaN, flag ``label_not_reported``, ``<label>:tails``).
    Fitted on out-of-fold stars when the ensemble is trained (or by ``kielnet
    calibrate``), stored in the bundle."""

    enabled: bool = False
    bin_stars: int = Field(default=250, ge=20, description="out-of-fold stars per bin of the predicted label")
    max_rate: float = Field(default=0.10, gt=0, le=1,
                            description="largest fraction of a bin beyond `tail` sigma at which the label is "
                                        "still reported")
    label_max_rate: dict[str, float] = Field(
        default_factory=dict, description="max_rate for these labels instead of the default (label name -> rate), "
                                          "e.g. a lower one where a known class of stars fails")
    tail: float = Field(default=3.0, gt=0, description="|residual| / sigma that counts as a tail")

    def rate_of(self, label: str) -> float:
        """The max_rate of ``label`` (its own, else the default)."""
        return float(self.label_max_rate.get(label, self.max_rate))

    @field_validator("label_max_rate")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        for name, r in v.items():
            if not 0 < r <= 1:
                raise ValueError(f"label_max_rate[{name!r}] = {r} must lie in (0, 1]")
        return v


class QualityConfig(_Strict):
    """Quality machinery carried by a bundle and applied by ``predict``."""

    neighbours: NeighboursConfig = NeighboursConfig()
    tail_regimes: TailRegimesConfig = TailRegimesConfig()
    embedding_ood: EmbeddingOODConfig = EmbeddingOODConfig()
    ensemble_spread: EnsembleSpreadConfig = EnsembleSpreadConfig()
    tsne: TsneConfig = TsneConfig()
    boundary_flag: BoundaryFlagConfig = BoundaryFlagConfig()


class ReportingRule(_Strict):
    """Withhold ``label`` (NaN + flag ``label_not_reported``) when the predicted
    ``when`` label is above ``above`` and/or below ``below`` (physical units)."""

    label: str
    when: str
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "ReportingRule":
        if self.above is None and self.below is None:
            raise ValueError("a reporting rule needs 'above' or 'below'")
        return self


class KielnetConfig(_Strict):
    """The whole declarative description of a kielnet model."""

    name: str
    description: str = ""
    spectrum: SpectrumPrepConfig | None = SpectrumPrepConfig()
    features: list[FeatureConfig] = []
    input_groups: dict[str, list[str]] = Field(
        default={}, description="named groups of scalar columns that are missing together (e.g. "
                                "2MASS: [j, h, k]); used by training.input_dropout and the "
                                "missing-input σ calibration. Every config also has the implicit "
                                "group 'all_inputs' of all scalar columns")
    labels: list[LabelConfig] = Field(min_length=1)
    model: ModelConfig
    training: TrainingConfig = TrainingConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    uncertainty: UncertaintyConfig = UncertaintyConfig()
    inference: InferenceConfig = InferenceConfig()
    reporting: list[ReportingRule] = []
    quality: QualityConfig = QualityConfig()
    checks: InputChecksConfig = InputChecksConfig()
    tuning: TuningConfig = TuningConfig()
    provenance: dict[str, Any] = Field(
        default={}, description="where this config came from (e.g. the tuning study that chose it); "
                                "informational, never read by training")

    @model_validator(mode="after")
    def _consistent(self) -> "KielnetConfig":
        feats = {f.name for f in self.features}
        if len(feats) != len(self.features):
            raise ValueError("feature names must be unique")
        for br in self.model.scalar_branches:
            unknown = set(br.features) - feats
            if unknown:
                raise ValueError(f"branch '{br.name}' uses undefined features {sorted(unknown)}")
        if (self.model.spectrum is None) != (self.spectrum is None):
            raise ValueError("model.spectrum and spectrum preprocessing must both be set or both be null")
        if self.model.spectrum is None and not self.model.scalar_branches:
            raise ValueError("the model needs a spectrum branch or at least one scalar branch")
        names = [lab.name for lab in self.labels]
        if len(set(names)) != len(names):
            raise ValueError("label names must be unique")
        if len(names) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels (one flag bit each), got {len(names)}")
        inputs = {c.lower() for c in self.scalar_columns()}
        for lab in self.labels:
            clash = inputs & set(column_candidates(lab.info))
            if clash:
                raise ValueError(f"label '{lab.name}' is read from column(s) {sorted(clash)} that the "
                                 "features also use as inputs: a label cannot be its own input")
        for rule in self.reporting:
            if rule.label not in names or rule.when not in names:
                raise ValueError(f"reporting rule uses labels not learned: {rule.label}, {rule.when}")
        unknown = set(self.quality.tail_regimes.label_max_rate) - set(names)
        if unknown:
            raise ValueError(f"quality.tail_regimes.label_max_rate names labels not learned: {sorted(unknown)}")
        bf = self.quality.boundary_flag
        if bf.enabled and bf.training_like == "tsne" and self.quality.tsne.reference_size < 2:
            raise ValueError("boundary_flag.training_like = tsne needs quality.tsne.reference_size >= 2")
        if bf.enabled and bf.training_like == "fast_score" and not (
                self.quality.embedding_ood.enabled or self.quality.ensemble_spread.enabled):
            raise ValueError("boundary_flag.training_like = fast_score needs quality.embedding_ood.enabled "
                             "or quality.ensemble_spread.enabled")
        if (self.quality.tsne.reference_size or bf.enabled and bf.training_like == "tsne") and self.spectrum is None:
            raise ValueError("t-SNE training-likeness needs a spectrum branch")
        cols = set(self.scalar_columns())
        for g, members in self.input_groups.items():
            if not members or set(members) - cols:
                raise ValueError(f"input group '{g}' must list scalar columns the features read "
                                 f"({sorted(cols)}), got {members}")
        if "all_inputs" in self.input_groups:
            raise ValueError("input group name 'all_inputs' is reserved (all scalar columns)")
        terms = self.uncertainty.terms
        if "head" in terms and not self.model.heteroscedastic:
            raise ValueError("uncertainty.terms has 'head' but model.heteroscedastic is false")
        if len(set(terms)) != len(terms) or not terms:
            raise ValueError(f"uncertainty.terms must be distinct and non-empty, got {terms}")
        if self.uncertainty.snr != "spectrum" and self.uncertainty.snr not in cols:
            raise ValueError(f"uncertainty.snr must be 'spectrum' or a scalar column the features read, "
                             f"got {self.uncertainty.snr!r}")
        if self.training.weighting.kind == "kde":
            missing = set(self.training.weighting.labels) - set(names)
            if missing:
                raise ValueError(f"weighting uses labels {sorted(missing)} that are not learned")
        return self

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def label_vocabulary(self) -> dict[str, LabelInfo]:
        """Name → :class:`kielnet.labels.LabelInfo` (unit, display name, description, aliases) of each label."""
        return {lab.name: lab.info for lab in self.labels}

    @property
    def label_units(self) -> dict[str, str]:
        """Name → unit string of each label ("" for none)."""
        return {lab.name: lab.info.unit for lab in self.labels}

    def groups(self) -> dict[str, list[str]]:
        """The input groups, with 'all_inputs' (every scalar column) last; empty without
        scalar inputs."""
        cols = self.scalar_columns()
        return {**self.input_groups, "all_inputs": cols} if cols else {}

    def scalar_columns(self) -> list[str]:
        """Star-table scalar columns that the features read."""
        cols: list[str] = []
        for f in self.features:
            for c in f.columns:
                if c not in cols:
                    cols.append(c)
        return cols

    def with_overrides(self, **sections: dict) -> "KielnetConfig":
        """Return a copy with sections partially updated (nested dicts are merged), e.g.
        ``cfg.with_overrides(ensemble={"n_splits": 1}, training={"weighting": {"kind": "kde"}})``
        (re-validated)."""

        return KielnetConfig.from_dict(_merge(self.model_dump(mode="json"), sections))

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>") -> "KielnetConfig":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid kielnet configuration in {source}:\n{exc}") from exc


def _merge(base, upd):
    """Deep merge: mappings merge key by key, anything else (lists included) replaces."""
    if isinstance(base, dict) and isinstance(upd, dict):
        out = dict(base)
        for k, v in upd.items():
            out[k] = _merge(base.get(k), v)
        return out
    return upd


def load_config(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> KielnetConfig:
    """Load a preset by name (see ``kielnet.presets.available()``) or a YAML file path.

    A file may start from another configuration with ``base: <preset name or path>``
    (a relative path is taken relative to the file): its sections are deep-merged
    onto the base (mappings merge key by key; lists such as ``features``, ``labels``
    or ``conv`` replace the base's list whole), and the result is validated.
    """
    from kielnet.presets import preset_path

    path = Path(name_or_path)
    if not path.suffix:
        path = preset_path(str(name_or_path))
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping at top level")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"configuration file {path}: 'base' must name a preset or a YAML file")
        if str(path.resolve()) in _seen:
            raise ConfigError(f"configuration file {path}: 'base' chain loops back to itself")
        base_path = Path(base)
        if base_path.suffix and not base_path.is_absolute():
            base_path = path.parent / base_path
        parent = load_config(base_path if base_path.suffix else base, _seen + (str(path.resolve()),))
        data = _merge(parent.model_dump(mode="json"), data)
    return KielnetConfig.from_dict(data, source=str(path))
