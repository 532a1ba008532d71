"""EasyR1 integration for Stage 3 (RLVR): reward entry file, format prompt, loss plugins, launcher.

Modules: ``reward`` (the file EasyR1 loads by path), ``paths`` (installed-file paths and the
``prism://`` / ``${prism:…}`` references to them), ``loss_plugin`` (prism losses with EasyR1's
``compute_policy_loss`` keywords), ``hook`` (the Ray worker set-up hook that patches EasyR1), ``launcher``
(``python -m prism_plugin.easyr1``), ``convert`` (PRISM data -> EasyR1 parquet). Importing this
package imports none of them.
"""
