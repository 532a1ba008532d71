"""LLaMA-Factory integration: start-up hook, PRISM stages, template and dataset registration.

Import-free on purpose: the interpreter start-up hook imports ``bootstrap`` from here.
"""
