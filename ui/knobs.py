"""The Compress page's knobs: a method picker that shows only that method's widgets, the bitwidth (or
quantization-aware training), weight clustering and a transfer to a class subset.

Every widget is keyed by its URL parameter (see ui.state) and bound to the URL; widgets of a method that
is not shown keep their value for the session. Help texts say what is real and what simulated.
"""

from __future__ import annotations

import streamlit as st

from ui import cache, state
from ui.state import COMPRESS_VALUES as DEFAULT
from ui.state import SLIDER_RANGES as RANGES
from workbench.presets import (
    BITWIDTHS,
    CLUSTER_CHOICES,
    INT8_KINDS,
    MAX_DISTILL_EPOCHS,
    MAX_RECOVERY_EPOCHS,
    QAT_BITS,
    RECOVERY_LRS,
    TECHNIQUES,
    model_lr,
)
from workbench.specs import (
    CALIBRATIONS,
    PRUNE_METHODS,
    PRUNE_SCHEDULES,
    PRUNE_SCOPES,
    RECONSTRUCTIONS,
    REWINDS,
    STUDENT_INITS,
    DataRef,
    ModelRef,
)

SHARED = {"bind": "query-params", "persist_state": "session"}   # in the URL, kept across pages
DIGITS_CLASSES = list(range(10))
# under each method: what it changes and whether the gain is real (options stay plain ids: they are the URL values)
CAPTIONS = {"unstructured": "zeros · simulated", "nm": "2:4 zeros · simulated", "structured": "channels · real",
            "distill": "student · real", "lowrank": "SVD · real"}
METHOD_HELP = ("**unstructured**: zeros stored densely, a *simulated* gain (gzip shrinks, the file and speed do "
               "not). **nm**: N:M 2:4, two of every four weights zero; an accuracy experiment, no CPU kernel. "
               "**structured**: channels physically removed, a *real* smaller and faster model. "
               "**distill**: a student, a narrower model trained on this one's outputs (*real*). **lowrank**: "
               "layers split into two thinner ones where that saves weights (*real*).")
REWIND_HELP = ("How each round retrains. lr: restart the learning-rate schedule every round (LR rewinding, Renda "
               "et al. 2020); none: one schedule spread over all rounds (fine-tuning); weight: reset the surviving "
               "weights to an early-training checkpoint (lottery-ticket rewinding; the samples ship one)")
RECONSTRUCT_HELP = ("After pruning, solve the kept weights layer by layer so each layer reproduces the unpruned "
                    "model's outputs on the training inputs: no labels, no training, seconds to a minute. "
                    "refit: least squares on the mask as chosen; obs: Optimal Brain Surgeon also picks which "
                    "weights of each unit go (same count per unit; not with random, unstructured only). Linear/Conv "
                    "layers of torch and ONNX models; the gain is still simulated (zeros stored densely)")
THIN_HELP = ("Remove this share of the channels / neurons of every layer first (structured, Torch-Pruning: a "
             "*real* smaller, faster model), recover, then prune the remaining weights to the sparsity above. A "
             "thinner, less sparse model can keep more weights in the same packed bytes: on digits-mlp, half the "
             "neurons first then 65% (recipes/mlp-thin-sparse-packed.yaml) packs smaller at no larger drop than 90% "
             "of the full model (BENCHMARKS.md, clustering section). Torch models, and ONNX graphs through their "
             "conversion")
THIN_EPOCHS_HELP = ("Fine-tuning right after the channels are removed, before any weight is pruned, at the model's "
                    "own learning rate (not the recovery learning rate below): removing channels is a bigger change "
                    "than a round of pruning. The benchmarked recipe recovers 30 epochs at 0.01, then retrains each "
                    "round 20 epochs at 0.003")
LR_HELP = ("Adam's peak learning rate for the recovery fine-tuning (each round's, when pruning in rounds), decayed "
           "by a cosine. The model's: 0.01 for the digits MLP and CNN, 0.001 for the ViT and for uploaded models. A "
           "lower one keeps more of what the model learnt, a higher one recovers from bigger changes. The centroid "
           "fine-tune of clustering keeps a tenth of the model's")
CALIB_SAMPLES_HELP = ("How many training inputs reconstruction and wanda read (a fixed random draw, so a training "
                      "file sorted by class still gives every class; all of them when it has fewer). Their time "
                      "grows with it: lower it for large models (Wanda's and SparseGPT's papers use 128)")


def method_knobs() -> str:
    """The method picker and the chosen method's knobs; returns the method."""
    technique = st.radio("Method", TECHNIQUES, key="technique", captions=[CAPTIONS[t] for t in TECHNIQUES],
                         horizontal=True, help=METHOD_HELP, **SHARED)
    {"unstructured": _unstructured, "nm": _nm, "structured": _structured, "distill": _distill,
     "lowrank": _lowrank}[technique]()
    if technique != "distill":
        per_round = " per round" if technique == "unstructured" and st.session_state["schedule"] != "oneshot" else ""
        epochs = st.slider(f"Recovery fine-tuning epochs{per_round}", 0, MAX_RECOVERY_EPOCHS, key="epochs", **SHARED,
                           help="training after the change that keeps pruned weights zero; torch models with "
                                "training data")
        if epochs:
            own = model_lr(state.current_model())
            st.selectbox("Recovery learning rate", (0.0, *RECOVERY_LRS), key="lr", **SHARED, help=LR_HELP,
                         format_func=lambda lr: f"{lr:g}" if lr else f"the model's ({own:g})")
    return technique


def _unstructured() -> None:
    st.slider("Sparsity: % of weights set to zero", *RANGES["sparsity"], key="sparsity", **SHARED,
              help="simulated gain: zeros are stored densely, so the file and latency stay the same; gzip and a "
                   "sparse format (minimum storage, an estimate) shrink")
    with st.expander("Pruning options", expanded=state.chosen("schedule") or state.chosen("thin")):
        thin = st.slider("Remove channels first (% per layer)", *RANGES["thin"], step=5, key="thin", help=THIN_HELP,
                         **SHARED)
        if thin and not st.session_state.get("sparsity"):
            st.caption("Channels first applies with a sparsity above 0; for channels alone, pick the structured "
                       "method.")
        elif thin:
            st.slider("Recovery after removing channels (epochs)", 0, MAX_RECOVERY_EPOCHS, DEFAULT["thin_epochs"],
                      key="thin_epochs", help=THIN_EPOCHS_HELP, **SHARED)
        st.radio("Pruning", PRUNE_METHODS, key="method", horizontal=True, **SHARED,
                 help="magnitude: drop the smallest |weight|; random: a baseline to compare with; lamp: "
                      "magnitude rescaled per layer (Lee et al. 2021), so a global cut spreads over the layers "
                      "whatever their scale and never empties one; wanda: |weight| times the RMS of the input it "
                      "multiplies on the training inputs (Sun et al. 2024), so weights on inputs that are always "
                      "zero go first; no labels, read again every round. A global wanda cut also compares the "
                      "input scales of different layers and can empty one (the preview warns): scope layer "
                      "cannot")
        st.radio("Scope", PRUNE_SCOPES, key="scope", horizontal=True, **SHARED,
                 help="global: rank all weights together; layer: prune every layer to the same sparsity; unit: "
                      "prune every output unit (neuron, channel) to it, the same count in every row of a layer "
                      "(the comparison Wanda's paper makes)")
        schedule = st.radio("Schedule", PRUNE_SCHEDULES, key="schedule", horizontal=True, **SHARED,
                            help="oneshot: prune once; iterative: remove a share of the surviving weights per "
                                 "round; gradual: the cubic schedule of Zhu & Gupta over a number of rounds. "
                                 "Rounds train in between (recovery epochs per round)")
        if schedule == "iterative":
            st.slider("Pruned per round (% of the survivors)", *RANGES["per_round"], DEFAULT["per_round"],
                      key="per_round", **SHARED)
        elif schedule == "gradual":
            st.slider("Rounds (gradual steps)", *RANGES["steps"], DEFAULT["steps"], key="steps", **SHARED)
        if schedule != "oneshot":
            st.radio("Between rounds: rewind", REWINDS, key="rewind", horizontal=True, help=REWIND_HELP, **SHARED)
        _reconstruct()


def _reconstruct() -> None:
    """The reconstruction radio and, when the method reads inputs (reconstruction or wanda), how many."""
    solve = st.radio("Reconstruct the kept weights", RECONSTRUCTIONS, key="reconstruct", horizontal=True,
                     help=RECONSTRUCT_HELP, **SHARED)
    if solve != "none" or st.session_state.get("method") == "wanda":
        st.number_input("Calibration samples", 1, None, DEFAULT["calib_samples"], 128, key="calib_samples",
                        help=CALIB_SAMPLES_HELP, **SHARED)


def _nm() -> None:
    st.caption("2:4 keeps the 2 largest of every 4 consecutive input weights: exactly 50% zeros. Simulated here: "
               "ONNX Runtime's CPU provider has no 2:4 kernel (sparse tensor cores on recent NVIDIA GPUs do).")
    st.radio("Pruning", PRUNE_METHODS, key="method", horizontal=True, **SHARED,
             help="magnitude: keep the 2 largest |weight| of each group of 4; random: a baseline; lamp ranks "
                  "like magnitude inside a layer, so its 2:4 mask is magnitude's; wanda: the 2 largest |weight| "
                  "times input RMS (the 2:4 setting of Sun et al. 2024)")
    _reconstruct()


def _structured() -> None:
    st.slider("Channels removed per layer (%)", *RANGES["ratio"], DEFAULT["ratio"], 5, key="ratio", **SHARED,
              help="real: channels, neurons and heads are physically removed (Torch-Pruning, coupled layers "
                   "together; the classifier's outputs kept). The file and multiply-adds shrink; speed is measured")
    st.toggle("Round channel counts to multiples of 8", value=DEFAULT["round8"], key="round8", **SHARED,
              help="SIMD-friendly widths. ONNX Runtime's CPU convolutions work on blocks of 8-16 channels, so a "
                   "width left between two multiples runs part of its vector work idle: measured on a ResNet-18 "
                   "layout at 70%, rounding made the pruned model almost twice as fast for about the same size "
                   "(BENCHMARKS.md, structured section). Off: exactly the chosen ratio per group")


def _distill() -> None:
    st.slider("Student width (% of the channels kept)", *RANGES["width"], DEFAULT["width"], 5, key="width", **SHARED,
              help="real: the student is a smaller dense model with this share of every layer's channels")
    st.slider("Training epochs", 1, MAX_DISTILL_EPOCHS, DEFAULT["distill_epochs"], key="distill_epochs", **SHARED,
              help="the student learns from the original model's softened outputs and the labels; torch models "
                   "with training data")
    st.radio("Student starts from", STUDENT_INITS, key="init", horizontal=True, **SHARED,
             help="teacher: the original's most important channels; random: fresh weights")


def _lowrank() -> None:
    st.slider("Energy kept per layer (%)", *RANGES["energy"], DEFAULT["energy"], key="energy", **SHARED,
              help="real where it applies: each layer keeps the smallest rank holding this share of its squared "
                   "singular values and becomes two thinner layers, but only when that saves weights")


def bits_knobs() -> None:
    bits = st.select_slider("Bitwidth of the weights", list(reversed(BITWIDTHS)), key="bits", **SHARED,
                            help="32 float · 16 fp16 · 8 int8 (ORT) · 4 and 2 MatMulNBits (ORT): real, smaller "
                                 "files · 7, 6, 5, 3 simulated (fake-quant, stored as float32)")
    method, layer_bits = state.layer_bits()
    if layer_bits:
        st.caption(f"Per-layer bits from the sensitivity allocation replace this bitwidth in the run "
                   f"(`{method}`, {len(layer_bits)} layers); clear them under Per-layer sensitivity.")
    qat = bits in QAT_BITS and st.toggle(
        "Quantization-aware training", key="qat", **SHARED,
        help="train with rounded weights (straight-through estimator), then export integer weights (QDQ): "
             "usually recovers accuracy at 4 bits and below; torch models with training data")
    if qat:
        st.slider("QAT epochs", 0, MAX_RECOVERY_EPOCHS, DEFAULT["qat_epochs"], key="qat_epochs", **SHARED)
        st.toggle("int8 activations too", key="qat_act8", **SHARED,
                  help="also round activations to 8 bits during training and in the exported graph")
    elif bits == 8:
        with st.expander("int8 options"):
            st.radio("int8 kind", INT8_KINDS, key="int8", horizontal=True, **SHARED,
                     help="static: calibrated QDQ, fast for convs; dynamic: MatMul/Gemm only (dynamic Conv is slow)")
            st.radio("Calibration", CALIBRATIONS, key="calibration", horizontal=True, **SHARED)


def cluster_knobs() -> None:
    with st.expander("Weight clustering (Deep Compression)", expanded=state.chosen("clusters")):
        clusters = st.select_slider(
            "Shared values per layer", CLUSTER_CHOICES, key="clusters", format_func=lambda k: f"{k}" if k else "off",
            **SHARED, help="k-means shares k values per layer (zeros stay zero). weights.packed stores entropy-coded "
                           "indices: a real size, decoded back by the workbench; the ONNX file stays float32 and "
                           "runs at float speed. Keep the bitwidth at 32")
        if clusters:
            st.slider("Fine-tune the shared values (epochs)", 0, MAX_RECOVERY_EPOCHS, key="cluster_epochs", **SHARED,
                      help="train the k values per layer with each weight's index fixed; torch models")
            st.select_slider("Shared values per bias", CLUSTER_CHOICES, key="bias_clusters", **SHARED,
                             format_func=lambda k: f"{k}" if k else "off (float16)",
                             help="biases and norm parameters share k values per tensor too, instead of being "
                                  "stored as float16: a few hundred bytes, which count once the weights are 40x "
                                  "smaller (BENCHMARKS.md, clustering section: bias k=32)")


def transfer_knobs(ref: ModelRef, data: DataRef) -> None:
    """Built-in digits: keep a subset of the digits. The user's data: re-train the head on its training file's
    classes. A choice the data cannot take, still in the session from before, is cleared so a run never
    carries a transfer the page does not show."""
    builtin = data.builtin is not None
    if not builtin:
        st.session_state["classes"] = []
    if builtin or not data.train_path:
        st.session_state["retrain_head"] = False
    opened = state.chosen("classes") if builtin else bool(data.train_path) and state.chosen("retrain_head")
    with st.expander("Transfer to a new task first" if not builtin else "Transfer to a subset of the classes first",
                     expanded=opened):
        if builtin:
            st.multiselect("Digits to keep (in this order)", DIGITS_CLASSES, key="classes", **SHARED,
                           help="re-train the classification head on these digits (relabelled 0..k-1) before "
                                "compressing; the run's baseline is then the transferred model")
        elif data.train_path:
            st.checkbox("Re-train the head on the training data's classes", key="retrain_head", **SHARED,
                        help="a new last Linear layer sized to the training labels, trained with the rest of the "
                             "model frozen; the run's baseline is then the transferred model")
            train = cache.splits(ref, data).train
            st.caption(f"The training file has {len(train):,} samples in {train.num_classes} classes (labels 0.."
                       f"{train.num_classes - 1}): a new head would have {train.num_classes} outputs.")
        else:
            st.caption("Add a labelled training file on the Model page to re-train the head for your classes.")
        if len(st.session_state.get("classes") or []) >= 2 or st.session_state.get("retrain_head"):
            st.checkbox("Train the whole model too", key="transfer_backbone", **SHARED,
                        help="the backbone trains as well, at a tenth of the head's learning rate (discriminative "
                             "fine-tuning): for a task far from the original; slower, and earlier pruning masks "
                             "are dropped")


def layer_knobs(layers: list[str]) -> None:
    """Layers to leave dense (`exclude`, any pruning method); the choices are the model's layer names.
    A choice (or per-layer sparsity) naming a layer of another model is dropped first; per-layer bits
    naming one are cleared (an allocation is for one model)."""
    chosen = st.session_state.get("exclude", [])
    if any(k not in layers for k in chosen):
        st.session_state["exclude"] = [k for k in chosen if k in layers]
    current = state.overrides()
    if any(k not in layers for k in current):
        state.set_overrides({k: v for k, v in current.items() if k in layers})
    method, bits = state.layer_bits()
    if any(k not in layers for k in bits):
        state.set_layer_bits(method, {})
    with st.expander("Leave layers dense", expanded=state.chosen("exclude")):
        st.multiselect("Excluded from pruning", layers, key="exclude", **SHARED,
                       help="these layers keep every weight (unstructured, 2:4 and structured pruning) or stay "
                            "whole (low-rank); a distilled student is trained whole. The per-layer sensitivity "
                            "below shows which layers hurt most")
