"""SarNET and SarNET VAE as a library (no DVC here; pipeline/ holds the stage scripts).

Module map, lower layers first (a module imports only from its own line or the lines above):
  errors, files, params, device, data, fid, semidense, optim   errors, atomic writes, strict params, data, FID maths, the masked layer, training settings and optimisers
  provenance, refresh                                   where a run ran (date, commit, CPU, GEMM time), the plan of `sarnet repro --for`
  layers                                                SemiDense stacks, whole-map convolutions and the autoregressive loop (naive, incremental)
  models, autoregressive, gans, vqvae, registry, classifier, gen_xgboost   the generators (each owns `sample`, some their training step), every kind by name, the FID instruments
  model_files, loader, names, generators                safetensors model files, the one loader, names, generate(n, seed)
  calibration, training, explain, figures, report, tracking, cli   calibration, training loop, figures, MLflow, CLI
"""

from importlib.metadata import version as _v

__version__ = _v("sarnet")
