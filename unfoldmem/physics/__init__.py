r"""Physics: four-vectors, phase space, PDFs, helicity amplitudes and processes (batched torch)."""
