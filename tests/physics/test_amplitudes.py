r"""Helicity amplitudes: HELAS building blocks and |M|² of the built-in processes vs analytic results."""

from __future__ import annotations

import math

import pytest
import torch

from unfoldmem.physics import helas as h
from unfoldmem.physics.couplings import EW_DEFAULTS, charge, z_couplings
from unfoldmem.physics.phase_space import two_body_decay
from unfoldmem.physics.process import get_process, incoming_momenta

F64 = torch.float64
C128 = torch.complex128


def _gamma_matrices() -> list[torch.Tensor]:
    """Dirac matrices built by hand in the chiral representation (Peskin eq. (3.40))."""
    s = [torch.eye(2, dtype=C128), torch.tensor([[0, 1], [1, 0]], dtype=C128),
         torch.tensor([[0, -1j], [1j, 0]], dtype=C128), torch.tensor([[1, 0], [0, -1]], dtype=C128)]
    out = []
    for mu in range(4):
        g = torch.zeros(4, 4, dtype=C128)
        g[:2, 2:] = s[mu]
        g[2:, :2] = s[mu] if mu == 0 else -s[mu]
        out.append(g)
    return out


GAMMA = _gamma_matrices()


def _slash(p: torch.Tensor) -> torch.Tensor:
    p = p.to(C128)
    return p[:, 0, None, None] * GAMMA[0] - sum(p[:, i, None, None] * GAMMA[i] for i in (1, 2, 3))


def _random_momenta(n: int, m: float, gen: torch.Generator) -> torch.Tensor:
    p3 = torch.randn(n, 3, dtype=F64, generator=gen) * 80
    e = torch.sqrt((p3**2).sum(-1) + m * m)
    return torch.cat([e[:, None], p3], -1)


def _mdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 0] - (a[..., 1:] * b[..., 1:]).sum(-1)


def _random_lorentz(gen: torch.Generator) -> torch.Tensor:
    """A random rotation times a boost with |β| = 0.9 along a random axis, as a 4×4 matrix."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=gen))
    rot = torch.eye(4, dtype=F64)
    rot[1:, 1:] = q * torch.sign(torch.det(q))
    n = torch.randn(3, dtype=F64, generator=gen)
    n = n / n.norm()
    beta, gamma = 0.9, 1 / math.sqrt(1 - 0.81)
    boost = torch.eye(4, dtype=F64)
    boost[0, 0] = gamma
    boost[0, 1:] = boost[1:, 0] = gamma * beta * n
    boost[1:, 1:] += (gamma - 1) * torch.outer(n, n)
    return boost @ rot


@pytest.mark.parametrize("mass", [0.0, 4.7, 172.5])
def test_spinor_completeness_and_dirac_equation(mass: float) -> None:
    r""":math:`\sum_\lambda u\bar u = \slashed p + m`, :math:`\sum_\lambda v\bar v = \slashed p - m`,
    :math:`(\slashed p - m)u = 0` against explicit Dirac matrices (Peskin eqs. (3.66)–(3.67))."""
    gen = torch.Generator().manual_seed(1)
    p = _random_momenta(8, mass, gen)
    p[0, 1:3] = 0.0  # along ±z: the helicity-spinor branch cut
    p[0, 3] = -p[0, 3].abs()
    p[0, 0] = torch.sqrt(p[0, 3] ** 2 + mass**2)
    if mass > 0:
        p[1] = torch.tensor([mass, 0.0, 0.0, 0.0], dtype=F64)  # at rest: quantised along +z
    eye = torch.eye(4, dtype=C128)
    uu = sum(torch.einsum("ni,nj->nij", h.spinor_u(p, mass, s), h.spinor_ubar(p, mass, s)) for s in (1, -1))
    vv = sum(torch.einsum("ni,nj->nij", h.spinor_v(p, mass, s), h.spinor_vbar(p, mass, s)) for s in (1, -1))
    scale = p[:, 0].max()
    assert (uu - (_slash(p) + mass * eye)).abs().max() < 1e-12 * scale
    assert (vv - (_slash(p) - mass * eye)).abs().max() < 1e-12 * scale
    for s in (1, -1):
        du = torch.einsum("nij,nj->ni", _slash(p) - mass * eye, h.spinor_u(p, mass, s))
        assert du.abs().max() < 1e-12 * scale


def test_massless_helicity_is_chirality() -> None:
    """A massless u(p, −) is purely left-handed and u(p, +) purely right-handed (Peskin §3.4)."""
    p = _random_momenta(4, 0.0, torch.Generator().manual_seed(2))
    assert h.spinor_u(p, 0.0, -1)[:, 2:].abs().max() == 0
    assert h.spinor_u(p, 0.0, 1)[:, :2].abs().max() == 0


def test_polarisation_vectors() -> None:
    r""":math:`\epsilon\cdot k = 0`, :math:`\epsilon\cdot\epsilon^* = -1`, and the completeness
    relation :math:`\sum_\lambda \epsilon^\mu\epsilon^{*\nu} = -g^{\mu\nu} + k^\mu k^\nu/m^2` (massive)."""
    gen = torch.Generator().manual_seed(3)
    m = 80.4
    k = _random_momenta(6, m, gen)
    eps = [h.polarization(k, m, s) for s in (1, 0, -1)]
    g = torch.diag(torch.tensor([1.0, -1, -1, -1], dtype=F64)).to(C128)
    total = sum(torch.einsum("ni,nj->nij", e, e.conj()) for e in eps)
    expect = -g + torch.einsum("ni,nj->nij", k, k).to(C128) / m**2
    assert (total - expect).abs().max() < 1e-12 * (k[:, 0].max() / m) ** 2
    for e in eps:
        assert h.mdot(e, k.to(C128)).abs().max() < 1e-11 * k[:, 0].max()
        assert torch.allclose(h.mdot(e, e.conj()).real, -torch.ones(6, dtype=F64))


def test_building_blocks_match_dirac_matrices() -> None:
    """Currents and off-shell fermions equal the explicit 4×4 Dirac-matrix products."""
    gen = torch.Generator().manual_seed(4)
    n = 5
    b = h.spinor_ubar(_random_momenta(n, 0.0, gen), 0.0, -1)
    u = h.spinor_u(_random_momenta(n, 3.0, gen), 3.0, 1)
    vec = torch.complex(torch.randn(n, 4, dtype=F64, generator=gen), torch.randn(n, 4, dtype=F64, generator=gen))
    q = _random_momenta(n, 0.0, gen) + _random_momenta(n, 2.0, gen)
    pl = torch.diag(torch.tensor([1, 1, 0, 0], dtype=C128))
    chiral = 0.3 * pl + 0.7 * (torch.eye(4, dtype=C128) - pl)
    j = h.ffv_current(b, u, 0.3, 0.7)
    j_ref = torch.stack([torch.einsum("ni,ij,nj->n", b, GAMMA[mu] @ chiral, u) for mu in range(4)], -1)
    assert (j - j_ref).abs().max() < 1e-12 * j_ref.abs().max()
    den = (_mdot(q, q) - 25.0 + 5.0j)[:, None]
    prop = _slash(q) + 5.0 * torch.eye(4, dtype=C128)
    fi = h.fermion_in_offshell(u, vec, 0.3, 0.7, q, 5.0, 1.0)
    fi_ref = -torch.einsum("nij,njk,nk->ni", prop, _slash_c(vec) @ chiral, u) / den
    assert (fi - fi_ref).abs().max() < 1e-12 * fi_ref.abs().max()
    fo = h.fermion_out_offshell(b, vec, 0.3, 0.7, q, 5.0, 1.0)
    fo_ref = -torch.einsum("ni,nij,njk->nk", b, _slash_c(vec) @ chiral, prop) / den
    assert (fo - fo_ref).abs().max() < 1e-12 * fo_ref.abs().max()


def _slash_c(v: torch.Tensor) -> torch.Tensor:
    return v[:, 0, None, None] * GAMMA[0] - sum(v[:, i, None, None] * GAMMA[i] for i in (1, 2, 3))


def _two_to_two(name: str, n: int, seed: int, shat_lo: float, shat_hi: float):
    gen = torch.Generator().manual_seed(seed)
    proc = get_process(name)
    theta = proc.theta({}, alpha_s=0.118) if proc.qcd else proc.theta()
    shat = shat_lo + (shat_hi - shat_lo) * torch.rand(n, dtype=F64, generator=gen)
    p_out, _ = proc.phase_space(torch.rand(n, 2, dtype=F64, generator=gen), shat, theta)
    return proc, theta, incoming_momenta(shat), p_out, shat


def test_qqbar_to_ttbar_vs_combridge() -> None:
    r"""|M|²(q q̄ → t t̄) = g⁴ (4/9)[(m²−t)² + (m²−u)² + 2m²s]/s², Combridge, Nucl. Phys. B151
    (1979) 429 (as in Ellis–Stirling–Webber Table 10.2)."""
    proc, theta, p_in, p_out, s = _two_to_two("ttbar", 32, 5, 350.0**2, 2000.0**2)
    m, g4 = 172.5, (4 * math.pi * 0.118) ** 2
    t, u = _mdot(p_in[:, 0] - p_out[:, 0], p_in[:, 0] - p_out[:, 0]), _mdot(p_in[:, 0] - p_out[:, 1], p_in[:, 0] - p_out[:, 1])
    ref = g4 * 4 / 9 * ((m * m - t) ** 2 + (m * m - u) ** 2 + 2 * m * m * s) / s**2
    for ch in ((2, -2), (-1, 1)):
        pi = p_in if ch[0] > 0 else p_in.flip(1)
        got = proc.matrix_element_squared(pi, p_out, theta, ch)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


def test_gg_to_ttbar_vs_combridge() -> None:
    r"""|M|²(gg → t t̄) = g⁴ [1/(6τ₁τ₂) − 3/8][τ₁² + τ₂² + ρ − ρ²/(4τ₁τ₂)], τ₁,₂ = (m² − t, u)/s,
    ρ = 4m²/s: Combridge, Nucl. Phys. B151 (1979) 429."""
    proc, theta, p_in, p_out, s = _two_to_two("ttbar", 32, 6, 350.0**2, 3000.0**2)
    m, g4 = 172.5, (4 * math.pi * 0.118) ** 2
    t, u = _mdot(p_in[:, 0] - p_out[:, 0], p_in[:, 0] - p_out[:, 0]), _mdot(p_in[:, 0] - p_out[:, 1], p_in[:, 0] - p_out[:, 1])
    t1, t2, rho = (m * m - t) / s, (m * m - u) / s, 4 * m * m / s
    ref = g4 * (1 / (6 * t1 * t2) - 3 / 8) * (t1**2 + t2**2 + rho - rho**2 / (4 * t1 * t2))
    got = proc.matrix_element_squared(p_in, p_out, theta, (21, 21))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("quark", [1, 2, 4])
def test_drell_yan_vs_helicity_formula(quark: int) -> None:
    r"""HELAS diagrams: |M|²(q q̄ → γ*/Z → ℓ⁻ℓ⁺) = (1/12)·4[(|A_LL|²+|A_RR|²)u² + (|A_LR|²+|A_RL|²)t²]
    with A_ij = e²Q_qQ_ℓ/s + g^q_i g^ℓ_j/(s − M_Z² + iM_ZΓ_Z): Ellis–Stirling–Webber eq. (9.9)."""
    proc, theta, p_in, p_out, s = _two_to_two("drell_yan", 32, 7, 40.0**2, 400.0**2)
    t, u = _mdot(p_in[:, 0] - p_out[:, 0], p_in[:, 0] - p_out[:, 0]), _mdot(p_in[:, 0] - p_out[:, 1], p_in[:, 0] - p_out[:, 1])
    alpha, mz, gz = proc.alpha, theta["m_z"], theta["gamma_z"]
    gq, gl = z_couplings(quark, alpha, theta["sin2w"]), z_couplings(13, alpha, theta["sin2w"])
    den = s - mz**2 + 1j * mz * gz
    amp = {(i, j): 4 * math.pi * alpha * charge(quark) * charge(13) / s + gq[i] * gl[j] / den
           for i in (0, 1) for j in (0, 1)}
    a2 = {k: v.real**2 + v.imag**2 for k, v in amp.items()}
    ref = ((a2[0, 0] + a2[1, 1]) * u**2 + (a2[0, 1] + a2[1, 0]) * t**2) / 3
    torch.testing.assert_close(proc.helas_matrix_element_squared(p_in, p_out, theta, (quark, -quark)), ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(proc.helas_matrix_element_squared(p_in.flip(1), p_out, theta, (-quark, quark)), ref, rtol=1e-10, atol=0)


def test_drell_yan_closed_form_equals_helas() -> None:
    """The closed form the MEM evaluates equals the two HELAS diagrams for every channel, on and
    off the Z peak, through matrix_elements_by_channel too, and so do its θ gradients."""
    proc, theta, p_in, p_out, _ = _two_to_two("drell_yan", 64, 11, 20.0**2, 1000.0**2)
    by = proc.matrix_elements_by_channel(p_in, p_out, theta)
    for k, ch in enumerate(proc.channels):  # p_in in beam order, as the hadronic integrand has it
        ref = proc.helas_matrix_element_squared(p_in, p_out, theta, ch)
        torch.testing.assert_close(proc.matrix_element_squared(p_in, p_out, theta, ch), ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(by[:, k], ref, rtol=1e-12, atol=0)
    for name in ("m_z", "gamma_z", "sin2w"):
        x = theta[name].clone().requires_grad_(True)
        g_closed, g_helas = (torch.autograd.grad(f(p_in, p_out, {**theta, name: x}, (2, -2)).sum(), x)[0]
                             for f in (proc.matrix_element_squared, proc.helas_matrix_element_squared))
        torch.testing.assert_close(g_closed, g_helas, rtol=1e-10, atol=0)


def test_w_lnu_vs_analytic() -> None:
    r"""|M|²(u s̄ → W⁺ → μ⁺ν) = (1/12)·4 |V_us|²(g²/2)² (p_u − p_μ⁺)⁴/|s − M_W² + iM_WΓ_W|² (V−A, only
    left-handed quark and neutrino): e.g. Ellis–Stirling–Webber eq. (9.33)."""
    proc, theta, p_in, p_out, s = _two_to_two("w_lnu", 32, 8, 40.0**2, 300.0**2)
    v_us = 0.2272  # |V_us|, Pythia 8 default (PDG 2006)
    g2 = 4 * math.pi * proc.alpha / proc.sin2w
    u = _mdot(p_in[:, 0] - p_out[:, 0], p_in[:, 0] - p_out[:, 0])
    den2 = (s - theta["m_w"] ** 2) ** 2 + (theta["m_w"] * theta["gamma_w"]) ** 2
    ref = (g2 / 2) ** 2 * u**2 / den2 / 3
    got = proc.matrix_element_squared(p_in, p_out, theta, (2, -3))
    torch.testing.assert_close(got, ref * v_us**2, rtol=1e-10, atol=0)


def _on_shell_semileptonic(n: int, seed: int, name: str = "ttbar_semileptonic"):
    """gg → 6 momenta with the tops exactly on shell (where the doubly-resonant set is gauge invariant)."""
    gen = torch.Generator().manual_seed(seed)
    proc = get_process(name)
    theta = proc.theta({}, alpha_s=0.118)
    shat = (400.0 + 600.0 * torch.rand(n, dtype=F64, generator=gen)) ** 2
    z = torch.zeros(n, dtype=F64)
    m_t = 172.5
    t, tb, _ = two_body_decay(torch.stack([shat.sqrt(), z, z, z], -1), m_t, m_t, torch.rand(n, 2, dtype=F64, generator=gen))
    out = []
    for top in (t, tb):
        w, b, _ = two_body_decay(top, 80.4 + torch.rand(n, dtype=F64, generator=gen), 0.0, torch.rand(n, 2, dtype=F64, generator=gen))
        f1, f2, _ = two_body_decay(w, 0.0, 0.0, torch.rand(n, 2, dtype=F64, generator=gen))
        out += [b, f1, f2]
    return proc, theta, incoming_momenta(shat), torch.stack(out, 1)


def test_gluon_ward_identity_on_shell_ttbar() -> None:
    """Replacing a gluon polarisation by its momentum k/k⁰ makes each colour-ordered gg → t t̄
    amplitude vanish (Ward identity of QCD, Peskin §16.1), relative to 1e-10 of the physical one."""
    proc, theta, p_in, p_out = _on_shell_semileptonic(16, 9)
    k1 = p_in[:, 0]
    phys = torch.stack(proc.gg_amplitudes(p_in, p_out, theta)).abs().amax((0, 1, 2))
    e_k = (k1 / k1[:, :1]).to(C128)[None, None]
    unphys = torch.stack(proc.gg_amplitudes(p_in, p_out, theta, e1=e_k)).abs().amax((0, 1, 2))
    assert (unphys / phys).max() < 1e-10
    # on-shell 2→2 with external spinors, both gluons and all helicities
    ttbar = get_process("ttbar")
    th = ttbar.theta({}, alpha_s=0.118)
    p_t, p_tb = p_out[:, :3].sum(1), p_out[:, 3:].sum(1)
    from unfoldmem.physics.processes.ttbar import gg_partial_amplitudes

    gs = torch.sqrt(4 * math.pi * th["alpha_s"])
    k2 = p_in[:, 1]
    phys_22, unphys_22 = [], []
    for ht in (1, -1):
        for htb in (1, -1):
            bt, vt = h.spinor_ubar(p_t, 172.5, ht), h.spinor_v(p_tb, 172.5, htb)
            for h2 in (1, -1):
                e2 = h.polarization(k2, 0.0, h2)
                for h1 in (1, -1):
                    amps = gg_partial_amplitudes(bt, vt, p_t, k1, k2, h.polarization(k1, 0.0, h1), e2, gs, 172.5)
                    phys_22.append(torch.stack(amps).abs().amax(0))
                amps = gg_partial_amplitudes(bt, vt, p_t, k1, k2, e_k[0, 0], e2, gs, 172.5)
                unphys_22.append(torch.stack(amps).abs().amax(0))
    ratio = torch.stack(unphys_22).amax(0) / torch.stack(phys_22).amax(0)
    assert ratio.max() < 1e-10


@pytest.mark.parametrize("name", ["ttbar_semileptonic", "ttbar_semileptonic_minus", "drell_yan", "ttbar"])
def test_lorentz_invariance(name: str) -> None:
    """|M|² is unchanged by a random rotation and boost (|β| = 0.9) of all momenta (1e-10)."""
    gen = torch.Generator().manual_seed(10)
    n = 16
    proc = get_process(name)
    theta = proc.theta({}, alpha_s=0.118) if proc.qcd else proc.theta()
    if proc.dim == 14:
        shat = torch.full((n,), 600.0**2, dtype=F64)
    else:
        shat = torch.full((n,), (400.0 if proc.qcd else 91.0) ** 2, dtype=F64)
    p_out, _ = proc.phase_space(torch.rand(n, proc.dim, dtype=F64, generator=gen), shat, theta)
    p_in = incoming_momenta(shat)
    lam = _random_lorentz(gen)
    me = proc.matrix_elements_by_channel(p_in, p_out, theta)
    me_b = proc.matrix_elements_by_channel(p_in @ lam.T, p_out @ lam.T, theta)
    torch.testing.assert_close(me_b, me, rtol=1e-10, atol=0)


def test_semileptonic_by_channel_equals_single_channel() -> None:
    """The shared-work channel table equals channel-by-channel evaluation (same amplitudes)."""
    proc, theta, p_in, p_out = _on_shell_semileptonic(8, 11)
    table = proc.matrix_elements_by_channel(p_in, p_out, theta)
    for i, ch in enumerate(proc.channels):
        torch.testing.assert_close(table[:, i], proc.matrix_element_squared(p_in, p_out, theta, ch), rtol=1e-14, atol=0)


def test_gradcheck_mt_and_mz() -> None:
    """torch.autograd.gradcheck of |M|² w.r.t. m_t (tt̄ → 6 fermions) and m_Z (Drell–Yan)."""
    proc, theta, p_in, p_out = _on_shell_semileptonic(3, 12)
    m_t = torch.tensor(173.0, dtype=F64, requires_grad=True)

    def f_top(mt: torch.Tensor) -> torch.Tensor:
        return proc.matrix_element_squared(p_in, p_out, {**theta, "m_t": mt}, (21, 21)) * 1e6

    assert torch.autograd.gradcheck(f_top, (m_t,), eps=1e-4, atol=1e-8, rtol=1e-5)
    dy, th, p_in2, p_out2, _ = _two_to_two("drell_yan", 3, 13, 85.0**2, 95.0**2)
    m_z = torch.tensor(91.0, dtype=F64, requires_grad=True)

    def f_z(mz: torch.Tensor) -> torch.Tensor:
        return dy.matrix_element_squared(p_in2, p_out2, {**th, "m_z": mz}, (2, -2))

    assert torch.autograd.gradcheck(f_z, (m_z,), eps=1e-5, atol=1e-8, rtol=1e-5)


def test_top_width_follows_mass() -> None:
    """With top_width='lo' the propagator width is the LO Γ_t(m_t) (Jeżabek–Kühn) and is
    differentiable in m_t."""
    proc = get_process("ttbar_semileptonic", top_width="lo")
    m_t = torch.tensor(175.0, dtype=F64, requires_grad=True)
    width = proc.width({"m_t": m_t, "gamma_t": torch.tensor(9.9)})
    x = EW_DEFAULTS.m_w**2 / 175.0**2
    ref = EW_DEFAULTS.g_fermi * 175.0**3 / (8 * math.pi * math.sqrt(2)) * (1 - x) ** 2 * (1 + 2 * x)
    assert abs(width.item() - ref) < 1e-12
    width.backward()
    assert m_t.grad is not None and m_t.grad > 0


def test_reference_polarisations_are_covariant_axial_gauge() -> None:
    r"""ε(k; q): ε·k = ε·q = 0, ε·ε* = −1, ε·ε = 0, and Σ εε* = −g + (kq + qk)/k·q
    (axial-gauge polarisation sum, e.g. Ellis–Stirling–Webber eq. (7.17))."""
    gen = torch.Generator().manual_seed(14)
    k, q = _random_momenta(6, 0.0, gen), _random_momenta(6, 0.0, gen)
    eps = h.polarizations_ref(k, q)
    kc, qc = k.to(C128), q.to(C128)
    scale = k[:, 0].max() + q[:, 0].max()
    assert h.mdot(eps, kc).abs().max() < 1e-13 * scale
    assert h.mdot(eps, qc).abs().max() < 1e-13 * scale
    assert h.mdot(eps, eps).abs().max() < 1e-13
    torch.testing.assert_close(h.mdot(eps, eps.conj()).real, -torch.ones(2, 6, dtype=F64))
    g = torch.diag(torch.tensor([1.0, -1, -1, -1], dtype=F64))
    total = torch.einsum("hni,hnj->nij", eps, eps.conj())
    kq = torch.einsum("ni,nj->nij", k, q)
    expect = -g + (kq + kq.transpose(1, 2)) / _mdot(k, q)[:, None, None]
    assert (total - expect.to(C128)).abs().max() < 1e-12
