r"""Processes: registry, phase space, top width, narrow-width limit, cards and a user process."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unfoldmem.cards import load_card
from unfoldmem.errors import CardError
from unfoldmem.physics.couplings import EW_DEFAULTS, top_width_lo, w_width_lnu_gmu
from unfoldmem.physics.helas import mdot
from unfoldmem.physics.phase_space import three_body_decay
from unfoldmem.physics.process import available_processes, get_process, incoming_momenta
from unfoldmem.physics.processes.ttbar_semileptonic import top_decay_me2

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ["drell_yan", "w_lnu", "ttbar", "ttbar_semileptonic", "ttbar_semileptonic_minus"]


def test_registry_lists_builtins_and_names_unknown() -> None:
    """Every built-in process is registered; an unknown name lists the registered ones."""
    assert set(BUILTIN) <= set(available_processes())
    with pytest.raises(KeyError, match=r"registered: .*drell_yan"):
        get_process("drel_yan")
    with pytest.raises(KeyError, match=r"parameters: m_z, gamma_z, sin2w"):
        get_process("drell_yan").theta({"mz": 91.0})
    with pytest.raises(KeyError, match="cuts: m_ll_min, m_ll_max"):
        get_process("drell_yan").check_cuts({"ptl_min": 20.0})


@pytest.mark.parametrize("name", BUILTIN)
def test_protocol_shapes_and_momentum_conservation(name: str) -> None:
    """phase_space gives (N, n, 4) momenta summing to (√ŝ, 0, 0, 0), massless (or m_t) final
    states, positive weights, and |M|² ≥ 0 of shape (N, n_channels)."""
    proc = get_process(name)
    theta = proc.theta({}, alpha_s=0.118)
    n = 64
    gen = torch.Generator().manual_seed(20)
    shat = torch.full((n,), 600.0**2, dtype=F64)
    p_out, w = proc.phase_space(torch.rand(n, proc.dim, dtype=F64, generator=gen), shat, theta)
    assert p_out.shape == (n, len(proc.final_state), 4)
    total = p_out.sum(1)
    torch.testing.assert_close(total, incoming_momenta(shat).sum(1), rtol=0, atol=1e-9)
    masses = torch.sqrt(mdot(p_out, p_out).clamp_min(0))
    expect = 172.5 if name == "ttbar" else 0.0
    assert (masses - expect).abs().max() < 1e-4
    assert (w > 0).all()
    me = proc.matrix_elements_by_channel(incoming_momenta(shat), p_out, theta)
    assert me.shape == (n, len(proc.channels)) and (me >= 0).all() and me.sum() > 0


@pytest.mark.parametrize("name", ["drell_yan", "w_lnu", "ttbar", "ttbar_semileptonic"])
def test_channel_table_equals_single_channels(name: str) -> None:
    """The shared-work channel table equals channel-by-channel evaluation."""
    proc = get_process(name)
    theta = proc.theta({}, alpha_s=0.118)
    gen = torch.Generator().manual_seed(21)
    shat = torch.full((8,), 500.0**2, dtype=F64)
    p_out, _ = proc.phase_space(torch.rand(8, proc.dim, dtype=F64, generator=gen), shat, theta)
    p_in = incoming_momenta(shat) @ torch.diag(torch.tensor([1.0, 1, 1, 1], dtype=F64))
    table = proc.matrix_elements_by_channel(p_in, p_out, theta)
    for i, ch in enumerate(proc.channels):
        single = proc.matrix_element_squared(p_in, p_out, theta, ch)
        torch.testing.assert_close(table[:, i], single, rtol=1e-14, atol=0)


def test_top_width_from_amplitude_vs_lo_formula() -> None:
    r"""Γ(t → b ℓ⁺ν) from our amplitude integrated over 3-body phase space (Gauss–Legendre in the
    Breit–Wigner-mapped m_W² and the lepton angle) equals Γ_t^LO(m_t)·Γ(W→ℓν)/Γ_W with
    Γ_t^LO = G_F m_t³/(8π√2)(1−x)²(1+2x) (Jeżabek–Kühn, Nucl. Phys. B314 (1989) 1) and
    Γ(W→ℓν) = G_F m_W³/(6π√2), to 1e-3 (narrow W: Γ_W = 2 MeV)."""
    m_w, g_w = EW_DEFAULTS.m_w, 2.085e-3
    for m_t in (172.5, 180.0):
        x1, w1 = np.polynomial.legendre.leggauss(160)
        x2, w2 = np.polynomial.legendre.leggauss(6)  # |M|² is quadratic in cos θ: exact
        u_s = torch.tensor((x1 + 1) / 2).repeat_interleave(6)
        u_c = torch.tensor((x2 + 1) / 2).repeat(160)
        weights = torch.tensor(np.outer(w1, w2).ravel() / 4)
        n = u_s.numel()
        # the W along +z (u=1 for cos θ), so the lepton angle in the W frame is u_c; the
        # unpolarised top makes |M|² independent of the W direction and of the lepton azimuth
        u = torch.stack([u_s, torch.ones(n, dtype=F64), torch.full((n,), 0.5, dtype=F64), u_c,
                         torch.full((n,), 0.3, dtype=F64)], -1)
        parent = torch.tensor([[m_t, 0.0, 0.0, 0.0]], dtype=F64).expand(n, 4)
        p_l, p_nu, p_b, w = three_body_decay(parent, 0.0, 0.0, 0.0, u, resonance12=(m_w, g_w))
        width = (weights * top_decay_me2(p_b, p_l, p_nu, m_t, m_w, g_w) * w).sum() / (2 * m_t)
        ref = top_width_lo(m_t) * w_width_lnu_gmu(m_w) / g_w
        assert abs(width / ref - 1) < 1e-3


@pytest.mark.parametrize(("channel", "sqrt_shat"), [("gg", 400.0), ("gg", 700.0), ("qq", 500.0)])
def test_narrow_width_limit(channel: str, sqrt_shat: float) -> None:
    r"""σ̂(gg/qq̄ → tt̄ → bμ⁺ν b̄dū) / (σ̂(tt̄)·BR(t→bμν)·BR(t̄→b̄dū)) → 1 for Γ_t, Γ_W → 0, with
    the closed forms σ̂_gg = πα_s²/(3ŝ)[(1+ρ+ρ²/16)ln((1+β)/(1−β)) − β(7/4+31ρ/16)] and
    σ̂_qq̄ = 8πα_s²/(27ŝ)β(1+ρ/2) (Glück, Owens, Reya, Phys. Rev. D17 (1978) 2324) and LO widths;
    tolerance 4 MC σ + 2e-3 (O(Γ/m))."""
    m_t, a_s = 172.5, 0.118
    g_t, g_w = float(top_width_lo(m_t)) * 1e-3, EW_DEFAULTS.gamma_w * 1e-3
    proc = get_process("ttbar_semileptonic", bw_cutoff=None, gamma_w=g_w)
    theta = proc.theta({"gamma_t": g_t}, alpha_s=a_s)
    n = 20000
    gen = torch.Generator().manual_seed(22)
    shat = torch.full((n,), sqrt_shat**2, dtype=F64)
    p_out, w = proc.phase_space(torch.rand(n, 14, dtype=F64, generator=gen), shat, theta)
    ch = (21, 21) if channel == "gg" else (2, -2)
    x = proc.matrix_element_squared(incoming_momenta(shat), p_out, theta, ch) * w / (2 * shat)
    s = sqrt_shat**2
    rho = 4 * m_t**2 / s
    beta = math.sqrt(1 - rho)
    if channel == "gg":
        big = math.pi * a_s**2 / (3 * s)
        sig = big * ((1 + rho + rho**2 / 16) * math.log((1 + beta) / (1 - beta)) - beta * (7 / 4 + 31 * rho / 16))
    else:
        sig = 8 * math.pi * a_s**2 / (27 * s) * beta * (1 + rho / 2)
    g_lnu = float(w_width_lnu_gmu(EW_DEFAULTS.m_w))
    br = (float(top_width_lo(m_t)) / g_t) ** 2 * (g_lnu / g_w) * (3 * g_lnu / g_w)
    ratio, err = x.mean().item() / (sig * br), x.std().item() / math.sqrt(n) / (sig * br)
    assert abs(ratio - 1) < 4 * err + 2e-3
    assert err < 0.01


def test_charge_conjugate_mode_has_same_rate() -> None:
    """CP: the ℓ⁻ mode |M|² at CP-mirrored momenta (p → (E, −p⃗), particles ↔ antiparticles)
    equals the ℓ⁺ mode's |M|² (CP-conserving SM at LO)."""
    plus, minus = get_process("ttbar_semileptonic"), get_process("ttbar_semileptonic_minus")
    theta = plus.theta({}, alpha_s=0.118)
    gen = torch.Generator().manual_seed(23)
    shat = torch.full((16,), 550.0**2, dtype=F64)
    p_out, _ = plus.phase_space(torch.rand(16, 14, dtype=F64, generator=gen), shat, theta)
    parity = torch.tensor([1.0, -1, -1, -1], dtype=F64)
    # ℓ⁺ mode (b, μ⁺, ν, b̄, d, ū) → CP → (b̄, μ⁻, ν̄, b, d̄, u): reorder to (b, u, d̄, b̄, μ⁻, ν̄)
    mirrored = (p_out * parity)[:, [3, 5, 4, 0, 1, 2]]
    p_in = incoming_momenta(shat)
    me_plus = plus.matrix_elements_by_channel(p_in, p_out, theta)[:, 0]
    me_minus = minus.matrix_elements_by_channel(p_in.flip(1) * parity, mirrored, theta)[:, 0]
    torch.testing.assert_close(me_minus, me_plus, rtol=1e-10, atol=0)


@pytest.mark.parametrize("card", sorted((ROOT / "cards" / "processes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_process_card_loads_and_builds(card: Path) -> None:
    """Each shipped process card validates, names a registered process, and its θ, options and
    cuts are accepted (integrand built with a stand-in PDF)."""
    from unfoldmem.physics.hadronic import integrand_from_card

    cfg = load_card(card, kind="process")
    integrand = integrand_from_card(cfg, pdf=_FlatPDF(), source=str(card))
    point = integrand(torch.rand(32, integrand.dim, dtype=F64, generator=torch.Generator().manual_seed(1)))
    assert point.weight.shape == (32,) and (point.weight >= 0).all() and point.weight.sum() > 0


def test_card_mistakes_name_the_key(tmp_path: Path) -> None:
    """An unknown process, parameter or cut in a card is a CardError naming the key."""
    from unfoldmem.physics.hadronic import integrand_from_card

    base = load_card(ROOT / "cards" / "processes" / "drell_yan.yaml", kind="process")
    bad = [({"process": "drel_yan"}, "process"), ({"theta": {"mz": 91.0}}, "theta"),
           ({"cuts": {"pt_min": 1.0}}, "cuts"), ({"options": {"nonsense": 1}}, "options")]
    for change, key in bad:
        card = base.model_copy(update=change)
        with pytest.raises(CardError, match=f"key '{key}'"):
            integrand_from_card(card, pdf=_FlatPDF(), source="dy.yaml")


class _FlatPDF:
    """Stand-in PDF x f(x) = x^0.5 (1-x)^3 for tests that need no physics from the PDF."""

    def xfx(self, pid: int, x: torch.Tensor, q: float) -> torch.Tensor:
        return x**0.5 * (1 - x) ** 3

    def alphas(self, q: float) -> float:
        return 0.118


def _load_example():
    spec = importlib.util.spec_from_file_location("my_process", ROOT / "examples" / "my_process.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_user_process_registers_and_integrates() -> None:
    r"""examples/my_process.py registers ``zprime_mumu``; its |M|² equals the vector-coupling
    formula 4/12·g⁴(t² + u²)·... = (2/3) g⁴ (t²+u²)/|s − M² + iMΓ|² ·(1/... ) (Peskin eq. (5.10)
    with e² → g²/propagator), and the hadronic integrand runs on it."""
    _load_example()
    proc = get_process("zprime_mumu")
    theta = proc.theta()
    gen = torch.Generator().manual_seed(24)
    shat = (1500 + 1000 * torch.rand(8, dtype=F64, generator=gen)) ** 2
    p_out, _ = proc.phase_space(torch.rand(8, 2, dtype=F64, generator=gen), shat, theta)
    p_in = incoming_momenta(shat)
    t = mdot(p_in[:, 0] - p_out[:, 0], p_in[:, 0] - p_out[:, 0])
    u = mdot(p_in[:, 0] - p_out[:, 1], p_in[:, 0] - p_out[:, 1])
    den2 = (shat - theta["m_zp"] ** 2) ** 2 + (theta["m_zp"] * theta["gamma_zp"]) ** 2
    # Σ|M|² = 8 g⁴ (t² + u²)/|D|², averaged over 4 spins and 3 colours
    ref = 8 * theta["g_zp"] ** 4 * (t**2 + u**2) / den2 / 12
    torch.testing.assert_close(proc.matrix_element_squared(p_in, p_out, theta, (2, -2)), ref, rtol=1e-10, atol=0)
    from unfoldmem.physics.hadronic import HadronicIntegrand

    integrand = HadronicIntegrand(proc, _FlatPDF(), 13000.0, 2000.0, 2000.0)
    assert (integrand(torch.rand(16, 4, dtype=F64, generator=gen)).weight > 0).all()


@pytest.mark.parametrize(("name", "param"), [("ttbar_semileptonic", "m_t"), ("drell_yan", "m_z")])
def test_hadronic_integrand_is_differentiable_in_theta(name: str, param: str) -> None:
    """d⟨w⟩/dθ at fixed unit-hypercube points by autograd equals a central finite difference
    (the mapping moves with θ too), relative 1e-5: the MEM normalisation can be differentiated."""
    from unfoldmem.physics.hadronic import HadronicIntegrand

    proc = get_process(name, top_width="lo") if name.startswith("ttbar") else get_process(name)
    integrand = HadronicIntegrand(proc, _FlatPDF(), 13000.0, 100.0, 100.0)
    u = torch.rand(256, integrand.dim, dtype=F64, generator=torch.Generator().manual_seed(25))
    x0 = proc.parameters[param].default
    val = torch.tensor(x0, dtype=F64, requires_grad=True)
    integrand.weight(u, {param: val}).mean().backward()
    eps = 1e-4
    up = integrand.weight(u, {param: x0 + eps}).mean()
    down = integrand.weight(u, {param: x0 - eps}).mean()
    fd = (up - down) / (2 * eps)
    assert abs(val.grad.item() - fd.item()) < 1e-5 * abs(fd.item()) + 1e-12
