r"""Model cards: architecture and training settings of a cINN or transfer-function flow."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from unfoldmem.cards.base import StrictModel

__all__ = [
    "EncodingConfig",
    "FlowConfig",
    "ConditionConfig",
    "TransferConfig",
    "TrainingConfig",
    "UncertaintyConfig",
    "ModelCard",
]


class EncodingConfig(StrictModel):
    """How events become tensors (see :mod:`unfoldmem.flows.encoding`)."""

    relative_phi: bool = Field(
        False,
        description="phi of objects 1.. relative to object 0; off by default: the conditional "
        "flow then has to learn the rotation (cINN toy closure KL 4.8 nats, see docs/flows.md)",
    )
    mass_offset: PositiveFloat = Field(1.0, description="m0 in log(m + m0), GeV")
    max_jets: PositiveInt = Field(8, description="jet slots of the padded reco tensor")
    max_leptons: PositiveInt = Field(2, description="muon and electron slots (each)")
    parton_coordinates: Literal["objects", "resonances", "onshell"] = Field(
        "resonances",
        description="cINN parton coordinates: per-object (pt, eta, phi, m); resonance masses "
        "and decay angles of the decay tree (unfoldmem.flows.parametrization); or onshell: "
        "primary decay products in the lab (pt, eta, phi), the others from their lab "
        "direction and the resonance mass (unfoldmem.flows.onshell)",
    )

    leptonic_chain: Literal["resonances", "lepton", "ellipse", "top_lepton"] = Field(
        "resonances",
        description="with resonances, coordinates of a leptonic t -> b W, W -> l nu chain: "
        "resonances (the tree's masses and decay angles); lepton (bottom-up: the lepton's lab "
        "log pt, eta, phi; m_W and the neutrino's direction about the lepton; m_t and the b's "
        "lab direction; unfoldmem.flows.lepton_anchored); ellipse (the lepton's and the b's lab "
        "log pt, eta, phi, two masses and the neutrino's angle on its ellipse; "
        "unfoldmem.flows.neutrino_ellipse; a W -> l nu without a top gets 'lepton'); top_lepton "
        "(the resonance coordinates, with the leptonic top's decay angles replaced by the "
        "lepton's lab log pt, eta, phi and the b's azimuth about the lepton in the top frame; "
        "unfoldmem.flows.top_lepton; draws outside the physical region are redrawn; a W -> l nu "
        "without a top keeps resonances); no effect without such a chain",
    )

    @model_validator(mode="after")
    def _onshell_lab_phi(self) -> EncodingConfig:
        if self.parton_coordinates == "onshell" and self.relative_phi:
            msg = ("encoding.relative_phi: parton_coordinates 'onshell' keeps every azimuth in "
                   "the lab frame; set relative_phi: false")
            raise ValueError(msg)
        if self.leptonic_chain != "resonances" and self.parton_coordinates != "resonances":
            msg = (f"encoding.leptonic_chain: {self.leptonic_chain!r} only with "
                   "parton_coordinates 'resonances' (got "
                   f"{self.parton_coordinates!r})")
            raise ValueError(msg)
        return self


class FlowConfig(StrictModel):
    """A conditional coupling flow with rational-quadratic spline couplings."""

    transforms: PositiveInt = Field(6, description="number of coupling layers")
    bins: int = Field(10, ge=2, description="spline bins K")
    hidden: list[PositiveInt] = Field([128, 128], description="hidden widths of each coupling MLP")
    slope: PositiveFloat = Field(1e-3, description="minimum spline slope")
    affine: bool = Field(
        True, description="start with a context-dependent element-wise affine map (location/scale)"
    )


class ConditionConfig(StrictModel):
    """Condition network of the cINN: a deep set (optionally with self-attention) over reco objects."""

    embed: PositiveInt = Field(64, description="per-object embedding width")
    hidden: list[PositiveInt] = Field([64, 64], description="hidden widths of the phi and rho MLPs")
    context: PositiveInt = Field(32, description="context vector handed to the flow")
    attention_layers: NonNegativeInt = Field(0, description="self-attention blocks (0: pure deep set)")
    heads: PositiveInt = Field(4, description="attention heads")
    direct_leptons: NonNegativeInt = Field(
        0,
        description="the encoded features of this many hardest leptons (muons and electrons "
        "together; zeros where an event has fewer) are appended to the context unmixed, so the "
        "flow sees the lepton itself and not only its sum with the jets (0: deep-set context only)",
    )
    direct_met: bool = Field(
        False, description="append the encoded MET features to the context the same way"
    )


class TransferConfig(StrictModel):
    """Transfer functions: one flow per jet multiplicity and a multiplicity classifier."""

    multiplicities: list[NonNegativeInt] = Field([4, 5, 6], description="jet multiplicities, ascending")
    open_last: bool = Field(True, description="the last multiplicity means 'this many or more'")
    classifier_hidden: list[PositiveInt] = Field([64, 64], description="P(multiplicity|parton) MLP")
    residual: bool = Field(
        False,
        description="model jets (and leptons) paired with a parton relative to it: pt ratio, "
        "eta and phi differences (flows/residual.py); more accurate, not yet exportable",
    )
    pairing: Literal["pt", "slot"] = Field(
        "pt",
        description="pt: the i-th jet (pt order) goes with the i-th hardest jet parton; slot: with "
        "the i-th jet parton in parton order (`unfoldmem train` orders the jets by their Delta-R "
        "truth match; the MEM sums W over the jet assignments)",
    )
    jet_pt_min: NonNegativeFloat = Field(
        0.0,
        description="jets not modelled relative to a parton have pt > this (GeV) and come "
        "pt-ordered; the flow sees log of the pt gaps to the next jet / to jet_pt_min, no sharp "
        "edge (0: log pt)",
    )
    jet_eta_max: PositiveFloat | None = Field(
        None,
        description="and |eta| < this; the flow sees jet_eta_max·atanh(eta/jet_eta_max) "
        "(null: eta)",
    )
    reco_mass: Literal["model", "drop"] = Field(
        "model",
        description="model: a reco mass that varies is a flow variable; drop: W is over (pt, eta, "
        "phi) as the parametric detector's exact density, samples keep the parton velocity",
    )

    @model_validator(mode="after")
    def _ascending(self) -> TransferConfig:
        m = self.multiplicities
        if not m or any(b <= a for a, b in itertools.pairwise(m)):
            msg = f"multiplicities must be a non-empty strictly ascending list, got {m}"
            raise ValueError(msg)
        return self


class TrainingConfig(StrictModel):
    """Weighted maximum-likelihood training (see :mod:`unfoldmem.flows.training`)."""

    epochs: PositiveInt = 50
    batch_size: PositiveInt = 1024
    lr: PositiveFloat = Field(1e-3, description="peak learning rate")
    weight_decay: float = Field(1e-5, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    val_fraction: float = Field(0.2, ge=0, lt=1, description="held-out fraction for validation")
    patience: NonNegativeInt = Field(10, description="epochs without improvement; 0 disables")
    seed: NonNegativeInt = 1
    checkpoint_every: PositiveInt = Field(500, description="optimizer steps between checkpoints")
    max_grad_norm: PositiveFloat | None = Field(10.0, description="gradient clipping (None: off)")


class UncertaintyConfig(StrictModel):
    """Model uncertainty: none, variational Bayesian weights, or a deep ensemble."""

    method: Literal["none", "bayesian", "ensemble"] = "none"
    members: PositiveInt = Field(5, description="ensemble members / weight samples at inference")
    prior_var: PositiveFloat = Field(1.0, description="Gaussian prior variance of Bayesian weights")
    init_logvar: float = Field(-9.0, description="initial log-variance of Bayesian weights")


class ModelCard(StrictModel):
    """A network to train: which model, its architecture, its training and its uncertainty."""

    kind: Literal["model"] = "model"
    name: str = Field(description="model label")
    model: Literal["cinn", "transfer"] = Field("cinn", description="cINN p(parton|reco) or transfer p(reco|parton)")
    encoding: EncodingConfig = Field(default_factory=EncodingConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    condition: ConditionConfig = Field(default_factory=ConditionConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    uncertainty: UncertaintyConfig = Field(default_factory=UncertaintyConfig)
