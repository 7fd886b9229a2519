"""Policy, critic and reference on one base model (``shared``) or on separate copies (``separate``).

shared (default): the base weights are loaded once. The policy is the LoRA adapter ``default`` (so that
``PeftModel.from_pretrained(base, run/final)`` loads it), the critic is the LoRA adapter ``critic`` plus a
zero-initialised scalar value head on the last hidden state, and the reference is the base with adapters
disabled: three roles for the memory of about one model.

``critic.backbone: shared`` puts the value head on the policy's own trunk instead of a critic adapter: the policy's
forward gives both the log-probs and the hidden states the value head reads (:func:`captured_hidden`), so one
forward and one backward serve both losses (TRL's original value-head model). No critic adapter exists then.
``critic.backbone: reference`` puts it on the frozen reference instead: the reference log-prob pass already computes
those hidden states, so the scoring pass keeps them (``Rollout.critic_states``) and the update trains the head on
them without any forward; the value loss never reaches the policy, and the critic's features never drift.

separate: the reference is a frozen full copy and the critic a full copy with its own LoRA adapter, the layout
of the published reference script. Kept for users who need it and to measure what sharing saves.

fsdp (torchrun, ``distributed.fsdp``, shared layout): :meth:`Roles.shard` splits the frozen base weights over the
processes with FSDP2; the adapters and the value head stay whole on each. The three roles work as before, except
that the critic reads its hidden states from a forward of the whole model (whose root gathers the embeddings).

peft's ``set_adapter`` also switches ``requires_grad`` to the active adapter, so every pass that needs
gradients must run its backward before another adapter is activated (the trainer does policy forward+backward,
then critic forward+backward).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.distributed import Dist, shard_model
from rlhflab.errors import UserError
from rlhflab.fastpaths import add_lora_in_place, plain_lm_head, use_logits_path
from rlhflab.models.forward import captured_hidden, keep_positions, position_ids
from rlhflab.models.loading import backbone, checkpoint_activations, compile_blocks, lora_config, lora_targets

POLICY, CRITIC = "default", "critic"


def value_head_width(base: torch.nn.Module) -> int:
    """Width of the hidden states the value head reads: the LM head's input features, which is not always
    ``config.hidden_size`` (OPT-350m projects 1024 → 512 before its head; multimodal configs keep the size under
    ``text_config``)."""
    head = base.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is not None:
        return weight.shape[-1]  # (vocab, hidden) for nn.Linear
    config = getattr(base.config, "text_config", None) or base.config
    return config.hidden_size


def make_value_head(hidden: int, kind: str, device: torch.device) -> torch.nn.Module:
    """The critic's value head, fp32, on hidden states (..., ``hidden``) → values (..., 1); its last layer is
    zero-initialised, so values start at exactly 0 (DESIGN §3.10). ``linear``: one ``Linear(hidden, 1)``; ``mlp``:
    ``Linear(hidden, hidden)`` → GELU → ``Linear(hidden, 1)``, features of its own on the trunk (``critic.head``)."""
    if kind == "mlp":
        last = torch.nn.Linear(hidden, 1, device=device, dtype=torch.float32)
        head = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden, device=device, dtype=torch.float32), torch.nn.GELU(), last
        )
    else:
        head = last = torch.nn.Linear(hidden, 1, device=device, dtype=torch.float32)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return head


class Roles:
    """The three roles of PPO behind one small interface; see the module docstring for the two layouts."""

    def __init__(self, base: torch.nn.Module, cfg: Config, with_critic: bool = True):
        self.layout = cfg.model.roles
        lora = cfg.lora
        separate = self.layout == "separate"
        self.backbone = cfg.critic.backbone if with_critic else None  # what the value head reads; None: no critic
        own_critic = self.own_critic
        # copies are taken before any adapter is injected, so they hold the plain base weights
        self.reference = copy.deepcopy(base).requires_grad_(False) if separate else None
        critic_base = copy.deepcopy(base) if separate and own_critic else None

        # targets resolved on the plain base (before any adapter is injected): auto → names of this model's layers
        policy_targets = lora_targets(base, lora.target_modules, "lora.target_modules")
        critic_targets = (
            lora_targets(base, cfg.critic.target_modules, "critic.target_modules", "critic") if own_critic else None
        )
        self.targets = {"policy": policy_targets, "critic": critic_targets}
        self.policy: PeftModel = get_peft_model(
            base,
            lora_config(lora.r, lora.alpha, lora.dropout, policy_targets, lora.bias),
            adapter_name=POLICY,
        )
        self.critic: PeftModel | None = None  # the model whose hidden states the value head reads
        self.critic_adapter = CRITIC if own_critic else POLICY  # (backbone reference: with adapters disabled)
        self.value_head: torch.nn.Module | None = None
        if with_critic:
            if own_critic:
                critic_lora = lora_config(cfg.critic.r, cfg.critic.alpha, lora.dropout, critic_targets)
            if critic_base is not None:
                self.critic = get_peft_model(critic_base, critic_lora, adapter_name=CRITIC)
            else:
                if own_critic:
                    self.policy.add_adapter(CRITIC, critic_lora)
                self.critic = self.policy
            device = next(base.parameters()).device
            self.value_head = make_value_head(value_head_width(base), cfg.critic.head, device)
        fast = cfg.fast_paths
        for model in (self.policy, self.reference):  # probe the LM heads now, not in a timed or checkpointed pass
            if model is not None:
                if fast.hidden_logprobs:
                    plain_lm_head(model)
                else:
                    use_logits_path(model)
        if fast.lora_in_place and cfg.train.activation_checkpointing != "selective":  # see add_lora_in_place
            for model in {id(m): m for m in (self.policy, self.critic) if m is not None}.values():
                add_lora_in_place(model)
        if cfg.train.activation_checkpointing != "none":  # the models that run with gradients (not the reference)
            for model in {id(m): m for m in (self.policy, self.critic) if m is not None}.values():
                checkpoint_activations(model, cfg.train.activation_checkpointing)
        if cfg.train.compile:
            for model in {id(m): m for m in (self.policy, self.critic, self.reference) if m is not None}.values():
                compile_blocks(model)
        self.policy.set_adapter(POLICY)
        self.set_dropout(cfg.train.dropout)
        self.sharded = False
        self.stop_together: Callable[[bool], bool] | None = None  # generation's joint early stop when sharded

    @property
    def own_critic(self) -> bool:
        """A critic adapter of its own (``critic.backbone: separate``)."""
        return self.backbone == "separate"

    @property
    def shared_trunk(self) -> bool:
        """The value head on the policy's trunk (``critic.backbone: shared``)."""
        return self.backbone == "shared"

    @property
    def critic_on_reference(self) -> bool:
        """The value head on the frozen reference's hidden states (``critic.backbone: reference``)."""
        return self.backbone == "reference"

    def shard(self, dist: Dist, device: torch.device) -> None:
        """FSDP2 under torchrun: shard the frozen base weights over the processes; the LoRA adapters and the value
        head stay whole on every process (see :func:`rlhflab.distributed.shard_model`). Shared layout only."""
        assert self.layout == "shared" and dist.enabled, "FSDP shards the one shared base over 2+ processes"
        lora = {p for n, p in self.policy.named_parameters() if "lora_" in n}
        shard_model(self.policy, lora, device)
        if self.value_head is not None:
            self.value_head.to(device)
        self.sharded = True
        self.stop_together = dist.all

    # ------------------------------------------------------------------------------------------------------------
    def set_dropout(self, enabled: bool) -> None:
        """train() mode turns on dropout everywhere (LoRA's included); eval() mode keeps gradients but no noise."""
        for model in self.models():
            model.train(enabled)

    def models(self) -> list[torch.nn.Module]:
        found = [self.policy, self.critic, self.reference]
        return [m for i, m in enumerate(found) if m is not None and all(m is not f for f in found[:i])]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """LoRA weights of both adapters and the value head; never the base weights."""
        params = [p for n, p in self.policy.named_parameters() if "lora_" in n]
        if self.critic is not None and self.critic is not self.policy:
            params += [p for n, p in self.critic.named_parameters() if "lora_" in n]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    # ------------------------------------------------------------------------------------------------------------
    def actor(self) -> PeftModel:
        """The policy model with its adapter active (what generation and the policy loss run)."""
        self.policy.set_adapter(POLICY)
        return self.policy

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module]:
        """The frozen starting model: the base with adapters disabled, or the separate copy."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def values(self, rollout: Rollout, granularity: str = "token") -> torch.Tensor:
        """Critic values: (B, T) for each response token's state, or (B, 1) for the prompt (sequence critic).

        The value of response token t is read where its logits are: at position P - 1 + t. Leaves the critic
        adapter active (its backward must run before :meth:`actor` switches back). With a shared trunk this is a
        forward of the policy, with ``backbone: reference`` one of the reference; the PPO loss and the scoring pass
        read the values from their policy or reference pass instead (:meth:`values_from_hidden`,
        :meth:`values_from_states`), and this stays the plain path they are tested against.
        """
        assert self.critic is not None and self.value_head is not None, "this algorithm has no critic"
        mask = rollout.attention_mask
        inputs = dict(
            input_ids=rollout.input_ids, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False
        )
        if self.critic_on_reference:
            with self.reference_model() as reference:
                hidden = self._last_hidden(reference, inputs)
        else:
            self.critic.set_adapter(self.critic_adapter)
            hidden = self._last_hidden(self.critic, inputs)
        return self.values_from_hidden(hidden, rollout, granularity)

    def critic_states(self, hidden: torch.Tensor, rollout: Rollout, granularity: str = "token") -> torch.Tensor:
        """The hidden states the value head reads, out of the last hidden states (B, P + T, H) of ``rollout``: the
        position that predicts each response token, (B, T, H), or the state before the first one, (B, 1, H)."""
        prompt_len, response_len = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
        if granularity == "sequence":
            return hidden[:, prompt_len - 1 : prompt_len]
        return hidden[:, prompt_len - 1 : prompt_len - 1 + response_len]

    def values_from_states(self, states: torch.Tensor) -> torch.Tensor:
        """The value head (fp32) on :meth:`critic_states`: (B, T, H) → (B, T), or (B, 1, H) → (B, 1)."""
        return self.value_head(states.float()).squeeze(-1)

    def values_from_hidden(self, hidden: torch.Tensor, rollout: Rollout, granularity: str = "token") -> torch.Tensor:
        """The value head on the critic's last hidden states (B, P + T, H) of ``rollout``: (B, T) or (B, 1)."""
        return self.values_from_states(self.critic_states(hidden, rollout, granularity))

    def _last_hidden(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        """The backbone's last hidden state (B, P + T, H). Sharded, from a forward of the whole model: the root
        unit's parameters (embeddings, final norm) are gathered only when the root's forward runs, so the backbone
        cannot be called alone; the LM head then projects just the last position."""
        if not self.sharded:
            return backbone(model)(**inputs).last_hidden_state
        length = inputs["input_ids"].shape[1]
        with captured_hidden(model) as captured:
            model(**inputs, logits_to_keep=keep_positions(length - 1, length, inputs["input_ids"].device))
        return captured[0]

    # ------------------------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Policy adapter at ``directory`` (PEFT format), critic adapter in ``critic/`` (only
        ``critic.backbone: separate`` has one), head in safetensors."""
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(str(directory), selected_adapters=[POLICY])
        if self.own_critic:
            self.critic.save_pretrained(str(directory), selected_adapters=[CRITIC])  # → directory/critic/
        if self.value_head is not None:
            save_file(
                {k: v.detach().contiguous() for k, v in self.value_head.state_dict().items()},
                str(directory / "value_head.safetensors"),
            )

    def load(self, directory: Path) -> None:
        """Load adapters and value head written by :meth:`save` (safetensors only)."""
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(
            self.policy, load_file(str(directory / "adapter_model.safetensors")), adapter_name=POLICY
        )
        if self.own_critic:
            set_peft_model_state_dict(
                self.critic,
                load_file(str(directory / CRITIC / "adapter_model.safetensors")),
                adapter_name=CRITIC,
            )
        if self.value_head is not None:
            state = load_file(str(directory / "value_head.safetensors"))
            if state.keys() != self.value_head.state_dict().keys():
                kind = "linear" if state.keys() == {"weight", "bias"} else "mlp"
                raise UserError(
                    f"critic.head: {directory / 'value_head.safetensors'} holds a {kind} value head, this config "
                    f"builds {'a linear' if kind == 'mlp' else 'an mlp'} one; set critic.head: {kind}"
                )
            self.value_head.load_state_dict(state)
        self.policy.set_adapter(POLICY)
