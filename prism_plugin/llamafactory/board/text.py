"""The text of the PRISM elements in LlamaBoard, in every language the board offers (``en``, ``ru``, ``zh``,
``ko``, ``ja``): entries of its ``LOCALES`` (element name -> language -> component properties) and ``ALERTS``
(message -> language -> text). Labels are translated; longer help stays in English where no translation
was made (the board's own convention for missing text)."""

from __future__ import annotations

LANGUAGES = ("en", "ru", "zh", "ko", "ja")

_LABELS: dict[str, dict[str, str]] = {
    "prism_tab": {"en": "PRISM configurations", "ru": "Конфигурации PRISM", "zh": "PRISM 参数设置",
                  "ko": "PRISM 구성", "ja": "PRISM の設定"},
    "prism_discriminator": {"en": "Discriminator folder", "ru": "Папка дискриминатора", "zh": "判别器目录",
                            "ko": "판별기 폴더", "ja": "識別器フォルダ"},
    "prism_reward": {"en": "Reward mode", "ru": "Режим награды", "zh": "奖励模式", "ko": "보상 방식",
                     "ja": "報酬モード"},
    "prism_policy_loss": {"en": "Policy loss", "ru": "Функция потерь политики", "zh": "策略损失",
                          "ko": "정책 손실", "ja": "方策損失"},
    "prism_num_generations": {"en": "Rollouts per prompt (G)", "ru": "Генераций на запрос (G)",
                              "zh": "每个提示的采样数 (G)", "ko": "프롬프트당 롤아웃 수 (G)",
                              "ja": "プロンプトあたりのロールアウト数 (G)"},
    "prism_max_new_tokens": {"en": "Max new tokens", "ru": "Макс. новых токенов", "zh": "最大生成长度",
                             "ko": "최대 생성 토큰 수", "ja": "最大生成トークン数"},
    "prism_temperature": {"en": "Temperature", "ru": "Температура", "zh": "温度系数", "ko": "온도",
                          "ja": "温度"},
    "prism_disc_learning_rate": {"en": "Discriminator learning rate", "ru": "Скорость обучения дискриминатора",
                                 "zh": "判别器学习率", "ko": "판별기 학습률", "ja": "識別器の学習率"},
}

_INFO: dict[str, str] = {
    "prism_discriminator": "prism_discriminator: a warmed-up discriminator (the warm-up stage's output) or "
                           "`prism-plugin upcycle`'s; lists the discriminators found under saves/.",
    "prism_reward": "prism_reward: discriminator (PRISM), verifiable (the rule reward on the answer: GRPO) or "
                    "FILE.py:FUNCTION.",
    "prism_policy_loss": "prism_policy_loss: grpo, dapo, gspo, gspo_token or a registered loss.",
    "prism_num_generations": "prism_num_generations: advantages compare a prompt's rollouts, so at least 2.",
    "prism_max_new_tokens": "prism_max_new_tokens: the rollout length limit.",
    "prism_temperature": "prism_temperature: rollout sampling temperature.",
    "prism_disc_learning_rate": "prism_disc_learning_rate: the discriminator's AdamW learning rate (constant).",
}

ALIGN_NOTE = (
    "**PRISM alignment** (`stage: prism_align`): the model above is the policy (e.g. your SFT output, "
    "template `prism_qwen3_vl`); datasets are alignment rows (`prism_kind: align`, e.g. `data teach`'s "
    "`align.jsonl`). Any other `prism_*` key goes into *Extra arguments* (JSON), which wins over these fields. "
    "Abort stops after the step under way and saves a checkpoint; Start again with the same output directory "
    "resumes from it."
)
DISC_NOTE = (
    "**PRISM discriminator warm-up** (`stage: prism_disc`): the model above is the discriminator to train "
    "(`prism-plugin upcycle`'s output or a warmed-up one; finetuning method *full*); datasets are warm-up pairs "
    "(`prism_kind: pairs`, e.g. `data make-pairs`' output). Other `prism_*` keys go into *Extra arguments*."
)


def locales() -> dict[str, dict[str, dict[str, str]]]:
    """``LOCALES`` entries of the PRISM elements: every element, every language."""
    entries: dict[str, dict[str, dict[str, str]]] = {}
    for name, labels in _LABELS.items():
        entries[name] = {}
        for lang in LANGUAGES:
            entry = {"label": labels[lang]}
            if name in _INFO:
                entry["info"] = _INFO[name]
            entries[name][lang] = entry
    entries["prism_align_note"] = {lang: {"value": ALIGN_NOTE} for lang in LANGUAGES}
    entries["prism_disc_note"] = {lang: {"value": DISC_NOTE} for lang in LANGUAGES}
    return entries


_ALERTS_EN = {
    "err_prism_no_discriminator": "PRISM alignment needs a discriminator folder (the warm-up stage's output or "
                                  "`prism-plugin upcycle`'s), or reward mode verifiable.",
    "err_prism_disc_full": "PRISM discriminator warm-up trains the whole discriminator: choose finetuning method "
                           "full.",
    "err_prism_policy_is_discriminator": "The model of PRISM alignment is the policy, but {path} is a "
                                         "discriminator: put it in Discriminator folder and choose the policy as "
                                         "the model.",
    "err_prism_dataset_kind": "Dataset {name} holds {kind} rows; {stage} reads {wanted}.",
    "info_prism_aborted": "Aborted (the board sends SIGABRT): the run stopped after the step under way and "
                          "{folder} is left as a kill leaves it: its last complete checkpoint ({checkpoint}), not "
                          "marked finished. Start again with the same output directory to resume from it.",
}


def alerts() -> dict[str, dict[str, str]]:
    """``ALERTS`` entries of the PRISM checks (English in every language; ``str.format`` fields)."""
    return {key: {lang: text for lang in LANGUAGES} for key, text in _ALERTS_EN.items()}
