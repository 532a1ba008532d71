"""vLLM as the rollout engine (``prism_rollout_engine: vllm``, ``--engine vllm``): the optional extra ``[vllm]``.

- :mod:`.versions` — which vLLM releases work beside LLaMA-Factory 0.9.5, and the one-line error otherwise;
- :mod:`.prompts` — a :class:`~prism_plugin.rollout.PolicyPrompt` as a vLLM prompt (one placeholder per image);
- :mod:`.weights` — the policy's weights under the names vLLM loads, in buckets of whole blocks;
- :mod:`.engine` — :class:`~prism_plugin.vllm_rollout.engine.VLLMRolloutEngine`, the
  :class:`~prism_plugin.rollout.RolloutEngine` on an in-process ``vllm.LLM``.

Nothing here imports vLLM at module load: configs, ``plan`` and the contract tests work without it.
"""
