"""lab-train's Hydra configs, shipped inside the installed package (Hydra's packaged configs: ``pkg://conf``).

Being a package, the YAML files travel with a wheel and are found through importlib.resources, so the console
scripts work from any directory, not only from a source checkout.
"""
