"""Training: one lifecycle for both modalities, and the parts it is made of.

    lifecycle     pretrain, restore_model, evaluate, export_for_step (any modality)
    modalities    what differs per modality (data, model, evaluators, export), a registry
    loop          the multi-step train loop and run_schedule (resume, checkpoints, policy)
    checkpoints   atomic numbered checkpoints, restore with clear errors
    preemption    SIGTERM handling and worker agreement
    step_guard    guarded optimiser steps (no update from a non-finite term)
    optim         LARS, AdamW, warm-up + cosine schedule, the one optimiser factory
    learning_rate_multipliers  per-variable learning rates for every optimiser (a mixin)
    finetune      supervised fine-tuning with Keras fit: checks, resume, evaluation
    finetune_source  the pretrained source (checkpoint or SavedModel) and its checks
    finetune_model   the fine-tuning classifier built from that source

Import the submodules (`from tf_sogclr.training import lifecycle`); this package imports
nothing itself, so models can use `step_guard` and `optim` without a cycle.
"""
