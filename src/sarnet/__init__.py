"""SarNET and SarNET VAE as a library (no DVC here; pipeline/ holds the stage scripts).

Module map, lower layers first (a module imports only from its own line or the lines above):
  errors, files, params, device, data, fid, semidense   errors, atomic writes, strict params, data, FID maths, the masked layer
  layers                                                SemiDense stacks and the autoregressive loop (naive, incremental)
  models, classifier, gen_xgboost                       the generators (each owns `sample`) and the FID classifier
  model_files, loader, names, generators                safetensors model files, the one loader, names, generate(n, seed)
  calibration, training, explain, figures, report, tracking, cli   calibration, training loop, figures, MLflow, CLI
"""

from importlib.metadata import version as _v

__version__ = _v("sarnet")
