"""SarNET and SarNET VAE as a library (no DVC here; pipeline/ holds the stage scripts).

Module map, lower layers first (a module imports only from its own line or the lines above; the
families import no other family; each stage depends on the core, the base and its own family; core/,
masked/ and instruments/ are namespace packages, families/__init__.py is the registry):
  core.errors, core.files, core.params, core.provenance   errors, atomic writes (JSON, text, PNG grids), strict params, where a run ran
  core.data, core.device, core.model_files, core.training   the datasets and image shape, where torch runs, self-describing model files and their names, the one training loop with its settings
  masked.semidense, masked.conv                            the masked layers: SemiDense with its stacks and autoregressive loop (SarNET), masked convolutions (pixel models)
  instruments.fid, instruments.classifier                  the FID maths and the FID classifiers (the `cnn` and `mlp` instruments)
  instruments.calibration, instruments.loader              the calibration of the FID scale, the instruments' own loader
  families.base                                            the base class of every generative model, and the VAE scaffolding two families share
  families.sarnet, families.sarnet_vae, families.conv_vae, families.gans, families.pixel, families.vqvae, families.xgboost   one module per family: simple SarNET, SarNET VAE, conv/β-VAE, GANs, PixelCNN/Row LSTM, VQ-VAE, generative XGBoost
  families                                                 the registry: a kind's family module, imported on demand; the one generator loader
  explain, report, refresh, remote, tracking, cli          figures of §4.3/§5, the FID table, the plan of `sarnet repro --for`, reading the DVC remote back, MLflow, the CLI
"""

from importlib.metadata import version as _v

__version__ = _v("sarnet")
