import numpy as np

from unfoldmem.inference.calibration import GaussianToy, LinearGaussianToy, toy_likelihoods
from unfoldmem.inference.likelihood_file import write_likelihoods

grid = {"m_t": np.linspace(170.0, 176.0, 25)}
# m_t toy: 2000 events, each measuring m_t with 15 GeV resolution; MC noise 0.0005 on each log P
toy = GaussianToy.sample(173.0, 15.0, 2000, seed=1)
lik = toy_likelihoods(toy, grid, mc_noise=0.0005, seed=2)
lik.flag[:20] = 1  # 20 events "outside the support": excluded and counted
write_likelihoods("ll.root", lik, overwrite=True)
# calibration pool: 100 000 events simulated at m_t = 173
pool = toy_likelihoods(GaussianToy.sample(173.0, 15.0, 100_000, seed=3), grid)
write_likelihoods("ll_pool.root", pool, overwrite=True)
# two correlated parameters: y ~ N(a + b z, 0.5), z ~ U(0, 2)
toy2 = LinearGaussianToy.sample(1.0, 2.0, 0.5, 300, seed=2)
lik2 = toy_likelihoods(toy2, {"a": np.linspace(0.7, 1.4, 8), "b": np.linspace(1.6, 2.3, 9)})
write_likelihoods("ll2d.root", lik2, overwrite=True)
print("xbar =", float(toy.x[20:].mean()), "sigma =", 15 / np.sqrt(1980))
print("cov 2D =", toy2.covariance().tolist())
