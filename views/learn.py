"""Learn: short explainers for workshops, on real weights or real measurements, and one paragraph per method."""

import numpy as np
import pandas as pd
import streamlit as st

from ui import cache, state, view
from ui import runs_view as rv
from workbench import charts, compare
from workbench.environment import FLAGS, environment
from workbench.lowrank import choose_rank, saves_weights
from workbench.preview import fake_quantize
from workbench.pruning import compute_masks, nm_mask
from workbench.significance import PairedChange, mcnemar_p, smallest_detectable
from workbench.specs import DataRef, LowRankSpec, ModelRef, PruneSpec
from workbench.zoo import sample_names

st.title("Learn")
st.caption("The ideas behind the numbers on Compare, small enough to show in a workshop.")
current = state.current_model().sample
sample = st.selectbox("Weights from the sample model", sample_names(), key="learn_sample",
                      index=sample_names().index(current) if current in sample_names() else 0)
view.model_or_stop(ModelRef(sample=sample))  # one error line and stop if it cannot load
weights, _ = cache.weights(ModelRef(sample=sample))
names = [n for n, w in weights.items() if w.size >= 64]

st.subheader("1 · Magnitude pruning")
st.markdown("Pruning sets the weights with the **smallest absolute value** to zero. Below: the top-left 8×8 "
            "corner of a real layer. Move the slider and watch which cells go grey.")
with view.guard():
    layer = st.selectbox("Layer", names, key="learn_prune_layer")
    corner = weights[layer].reshape(weights[layer].shape[0], -1)[:8, :8]
    sparsity = st.slider("Sparsity (% of the cells set to zero)", 0, 95, 50, 5, key="learn_sparsity") / 100
    cells = charts.magnitude_mask_frame(corner, sparsity)
    left, right = st.columns([1, 1])
    left.altair_chart(charts.weight_matrix(cells), width="content")
    kept = cells[cells.kept]
    right.metric("cells zeroed", f"{(~cells.kept).sum()} of {len(cells)}")
    right.metric("smallest |weight| kept", f"{kept.weight.abs().min():.3f}" if len(kept) else "—")
    right.markdown("The matrix is still 8×8: the zeros are stored and multiplied like any other value. "
                   "That is why pruning alone changes neither the file size nor the latency (section 3).")

st.subheader("2 · Quantization levels")
st.markdown("Quantizing to *b* bits keeps only 2^b evenly spaced values (orange lines); every weight moves to "
            "the nearest one. Fewer bits: fewer, coarser levels, bigger rounding error.")
with view.guard():
    layer = st.selectbox("Layer", names, key="learn_quant_layer", index=min(1, len(names) - 1))
    bits = st.slider("Bits per weight", 2, 8, 4, key="learn_bits")
    w = weights[layer].ravel()
    left, right = st.columns([3, 1])
    left.altair_chart(charts.levels_histogram(w, bits), width="stretch")
    q = fake_quantize(w, bits)
    right.metric("levels", f"{2 ** bits}")
    right.metric("distinct values used", f"{len(np.unique(q)):,}")
    right.metric("mean rounding error", f"{np.abs(w - q).mean() / np.abs(w).mean():.1%}", help="of the mean |weight|")
    right.metric("storage vs float32", f"{32 / bits:.0f}× smaller", help="only with a kernel/format for these bits")

st.subheader("3 · Why sparse is not fast")
st.markdown("A dense matrix multiply does every multiply-add, zero or not: the same work, the same time. "
            "Speed needs a sparse kernel (ONNX Runtime's CPU provider has none for this) or smaller shapes.")
with view.guard():
    timings = rv.matmul_timings((0.0, 0.5, 0.9, 0.99))
    left, right = st.columns([3, 2])
    left.altair_chart(charts.timing_bars(timings), width="stretch")
    right.dataframe(timings.assign(sparsity=timings.sparsity.map("{:.0%}".format)), hide_index=True,
                    column_config={"median_ms": st.column_config.NumberColumn("median ms", format="%.3f")})
    runs = rv.get_store().list(status="succeeded", limit=200)
    pruned = compare.pruned_latency_frame(rv.compare_frame(rv.get_store(), runs)) if runs else pd.DataFrame()
    if not pruned.empty:
        st.markdown("**Your own pruned runs** (ONNX Runtime, batch 1; speedup vs the run's baseline):")
        st.dataframe(pruned, hide_index=True)

st.subheader("4 · What int8 needs from the CPU")
env = environment(threads=1)
st.markdown(f"This machine: **{env['cpu_model'] or 'unknown CPU'}**, {env['logical_cores']} logical cores.  \n"
            f"{env['int8_note']}.")
flags = [{"flag": f, "present": env["cpu_flags"].get(f), "what it gives": rv.FLAG_MEANING.get(f, "")} for f in FLAGS]
st.dataframe(pd.DataFrame(flags), hide_index=True, width="stretch")
st.caption("Without VNNI or AMX, int8 dot products take several instructions each, and int8 may be no faster than "
           "float. Small models at batch 1 are slower in int8 anyway: quantize/dequantize overhead dominates.")

st.subheader("5 · The other methods on the Compress page")
st.markdown("Each is one line in a recipe and one choice on **Compress**. What they change, and whether the gain "
            "is real on this machine:")
with st.expander("N:M (2:4) sparsity: a pattern GPUs can skip", expanded=True):
    st.markdown("In every group of 4 consecutive input weights, the 2 smallest |weight| become zero: exactly 50%, "
                "in a regular pattern. Sparse tensor cores (NVIDIA Ampere and later) skip those zeros for about "
                "twice the math throughput. ONNX Runtime's CPU provider has no 2:4 kernel, so here it is an "
                "**accuracy experiment**: the file and the speed stay the same.")
    with view.guard():
        layer = st.selectbox("Layer", [n for n in names if weights[n].ndim == 2], key="learn_nm_layer",
                             help="Linear layers: their rows are outputs, their columns consecutive inputs")
        corner = weights[layer][:8, :8]
        cells = charts.magnitude_mask_frame(corner, 0.0).assign(kept=nm_mask(np.abs(corner), 2, 4).ravel())
        left, right = st.columns([1, 1])
        left.altair_chart(charts.weight_matrix(cells), width="content")
        right.metric("cells zeroed (2:4)", f"{(~cells.kept).sum()} of {len(cells)}")
        right.markdown("Every row keeps 2 of each 4 neighbours, even where magnitude pruning at 50% (section 1) "
                       "would keep 3 or 1: that constraint usually costs a little more accuracy.")
with st.expander("Rewinding: how pruning rounds retrain"):
    st.markdown("Iterative pruning retrains after every round. **Fine-tuning** carries on with a small, decaying "
                "learning rate. **LR rewinding** restarts the learning-rate schedule at its peak every round; "
                "Renda, Frankle & Carbin (2020) found it recovers more accuracy for the same training. **Weight "
                "rewinding** (the lottery ticket) also resets the surviving weights to an early-training "
                "checkpoint before retraining. All three end in the same kind of model: masked zeros, stored "
                "densely. Compare them with the per-round chart on **Compare**.")
with st.expander("Reconstruction: repairing a mask without training"):
    st.markdown("Pruning one shot breaks a model because each layer's output moves, and the next layer sees "
                "inputs it was not trained for. **Reconstruction** solves each layer again, in order, so that it "
                "reproduces the unpruned model's outputs on a few hundred inputs: a least-squares problem per "
                "output unit (**refit**), needing no labels and no training. **obs** (Optimal Brain Surgeon, as in "
                "OBC and SparseGPT) also chooses which weights go: the one whose removal raises the error least, "
                "with the others corrected, one at a time. On the sample MLP it brings 90% one-shot pruning "
                "from near chance to within 1.5 points of the original (BENCHMARKS.md, reconstruction section). "
                "The zeros are still stored densely: a **simulated** gain, like any unstructured mask.")
with st.expander("Global ranking: magnitude vs LAMP vs Wanda"):
    st.markdown("A **global** cut ranks every weight of every layer together. By |w| alone, a layer whose weights "
                "are small (BatchNorm folded into a convolution shrinks or grows a whole layer) loses far more than "
                "its share, up to all of it. **LAMP** (Lee et al. 2021) scores each weight against the larger "
                "weights of its own layer: the same order inside a layer, but no layer's scale counts as "
                "importance, and each layer keeps its largest weight. **Wanda** (next section) weighs |w| by its "
                "input's size, so the scale of each layer's inputs moves the cut too. Per layer, the share each "
                "ranking prunes:")
    with view.guard():
        overall = st.slider("Overall sparsity (%)", 50, 98, 90, key="learn_lamp_sparsity") / 100
        rms = cache.input_rms(ModelRef(sample=sample), DataRef())
        shares = {method: {n.removesuffix(".weight"): 1 - keep.mean() for n, keep in
                           compute_masks(weights, PruneSpec(sparsity=overall, method=method), rms=rms).items()}
                  for method in ("magnitude", "lamp", "wanda")}
        st.dataframe(pd.DataFrame(shares).style.format("{:.1%}"), width="stretch")
with st.expander("Weights and their inputs: magnitude vs Wanda"):
    st.markdown("|w| alone ignores what a weight multiplies. In digits-mlp's first layer every weight reads one "
                "pixel, and a few pixels are blank in every image: their weights never change the output, yet "
                "training never shrinks them, so magnitude keeps many. **Wanda** (Sun et al. 2024) ranks by |w| "
                "times the RMS of the weight's input on the training images (no labels): a weight on a blank pixel "
                "scores zero. Per pixel, how many of the layer's 300 units keep their weight:")
    with view.guard():
        mlp, level = ModelRef(sample="digits-mlp"), st.slider("Overall sparsity (%)", 50, 95, 80, 5,
                                                              key="learn_wanda_sparsity") / 100
        mlp_weights, _ = cache.weights(mlp)
        rms = cache.input_rms(mlp, DataRef())
        kept = {m: compute_masks(mlp_weights, PruneSpec(sparsity=level, method=m), rms=rms)["fc1.weight"].sum(0)
                for m in ("magnitude", "wanda")}
        blank = rms["fc1.weight"][0] == 0
        cols = st.columns(3)
        cols[0].altair_chart(charts.image_grid(rms["fc1.weight"].reshape(8, 8), "pixel RMS", ".2f", "greys"))
        for col, method in zip(cols[1:], kept, strict=True):
            col.altair_chart(charts.image_grid(kept[method].reshape(8, 8), f"kept by {method}"))
        st.caption(f"{int(blank.sum())} pixels are blank in all {len(cache.splits(mlp, DataRef()).solving):,} "
                   f"training images: magnitude keeps {int(kept['magnitude'][blank].sum())} weights on them, Wanda "
                   f"{int(kept['wanda'][blank].sum())}. In a global cut Wanda's mask is well ahead of magnitude's "
                   "on this MLP at 80-90%, well behind on the CNN, and empties whole layers of the ViT, whose layers' "
                   "inputs differ in scale (BENCHMARKS.md, ranking section).")
with st.expander("Channels first: the same bytes hold more weights"):
    st.markdown("In weights.packed every kept weight pays for its cluster index *and* for where it sits: the "
                "entropy-coded positions. At 90% sparsity most of a layer is zeros, and each kept weight's position "
                "costs several bits. Removing channels first (structured, a really smaller model) leaves fewer "
                "weights, so the same bytes fit them at a lower sparsity, where positions are cheap. Below: real "
                "weights of the sample, pruned by magnitude in one shot, 8 shared values per layer, packed here.")
    with view.guard():
        thin = st.slider("Channels removed first (%)", 10, 80, 50, 10, key="learn_thin") / 100
        same = cache.same_bytes(ModelRef(sample=sample), thin)
        full, thinner = same.full, same.thin
        fits = "all of them, dense" if thinner.sparsity == 0 else f"at {thinner.sparsity:.0%} sparsity"
        left, mid, right = st.columns(3)
        left.metric(f"kept in {full.bytes:,} bytes, full model at 90%", f"{full.kept:,}")
        mid.metric(f"kept, {thin:.0%} of the channels removed first", f"{thinner.kept:,}",
                   f"{thinner.kept / full.kept - 1:+.0%}", help=f"{thinner.weights:,} weights left, {fits}, "
                   f"{thinner.bytes:,} bytes")
        right.metric("position bits per kept weight", f"{8 * thinner.position_bytes / thinner.kept:.1f}",
                     f"{8 * thinner.position_bytes / thinner.kept - 8 * full.position_bytes / full.kept:+.1f} vs "
                     "the full model", delta_color="inverse")
        st.caption("Bytes measured by packing the weights (workbench.packing); nothing is trained, so this shows "
                   "what each weight costs, not which model is more accurate. Removing too many channels takes away "
                   "capacity that no number of kept weights gives back: BENCHMARKS.md (clustering section) trains "
                   "both and measures the accuracy. On the Compress page: Pruning options, Remove channels first.")
with st.expander("Quantization-aware training (QAT)"):
    st.markdown("Post-training quantization rounds the trained weights once; at 4 bits and below the rounding "
                "error costs accuracy. QAT rounds the weights in the forward pass during a few epochs of training, "
                "and lets gradients pass the rounding as if it were not there (the straight-through estimator), "
                "so the weights settle where rounding hurts least. The exported model stores integer weights: a "
                "real, smaller file; whether it is faster depends on the kernels ONNX Runtime has for that width.")
with st.expander("Distillation: a smaller student"):
    st.markdown("A narrower copy of the model (the student) learns from the original's (the teacher's) softened "
                "output probabilities as well as the labels (Hinton et al. 2015): which wrong classes the teacher "
                "finds close carries information a small model can use. The student is a smaller dense model, so "
                "its size and speed gains are **real**; its accuracy is only known after training.")
with st.expander("Low-rank factorization"):
    st.markdown("The singular value decomposition writes a weight matrix W (m×n) as a sum of rank-1 pieces, "
                "largest first. Keeping the first r gives two thin layers with r·(m+n) weights instead of m·n: "
                "fewer weights and multiply-adds (**real**) when r is small. *Energy* is the share of the squared "
                "singular values kept. Trained layers are rarely low-rank, so accuracy drops quickly without "
                "fine-tuning.")
    with view.guard():
        layer = st.selectbox("Layer", names, key="learn_rank_layer")
        energy = st.slider("Energy kept (%)", 50, 99, 90, key="learn_energy") / 100
        matrix = weights[layer].reshape(weights[layer].shape[0], -1)
        rank = choose_rank(np.linalg.svd(matrix, compute_uv=False), LowRankSpec(energy=energy))
        m, n = matrix.shape
        left, right = st.columns(2)
        left.metric("rank kept", f"{rank} of {min(m, n)}")
        right.metric("weights as two layers", f"{rank * (m + n):,} vs {m * n:,}",
                     help="factorizing pays only when r·(m+n) < m·n: "
                          + ("it does here" if saves_weights(rank, m, n) else "not at this energy"))
with st.expander("Weight clustering (Deep Compression)"):
    st.markdown("k-means groups a layer's nonzero weights into k shared values; each weight then stores a "
                "log2(k)-bit index (4 bits for k = 16) and the layer a small table of values. Deep Compression "
                "(Han et al. 2016) combined pruning, clustering and Huffman coding. The workbench writes the "
                "positions and indices entropy-coded into weights.packed, a **real** size it decodes back "
                "exactly, and the network without those weights into graph.onnx (a few hundred bytes gzipped: "
                "they count once the weights are 40× smaller); `workbench unpack` turns the two back into the "
                "model. The ONNX file itself stays float32 and runs at float speed.")

st.subheader("6 · Is an accuracy change real?")
st.markdown("A variant and its baseline answer the same test samples, so what counts is how many samples **changed "
            "side**: right before and wrong now, or the reverse. If the two models were equally good, each changed "
            "sample would be a coin toss; the exact **McNemar test** asks how likely a split this lopsided is by "
            "chance. Every run reports these counts with its accuracy (Compare: `acc_change`, the claims, and "
            "*Run against run* for two runs on the same data).")
with view.guard():
    left, right = st.columns([2, 1])
    samples = left.number_input("Test samples", 20, 100_000, 360, step=10, key="learn_noise_samples")
    worse = left.slider("Went from right to wrong", 0, 30, 3, key="learn_noise_worse")
    better = left.slider("Went from wrong to right", 0, 30, 1, key="learn_noise_better")
    change = PairedChange(samples, worse, better, mcnemar_p(worse, better))
    right.metric("accuracy change", f"{100 * (better - worse) / samples:+.2f} pt")
    right.metric("verdict", change.verdict, help=change.sentence())
    right.metric("p-value", f"{change.p_value:.3f}", help="below 0.05: beyond noise")
    st.caption(f"However lopsided, fewer than {smallest_detectable()} changed samples can never reach p < 0.05: on the "
               "digits test split (360 samples) that is any change of 5 samples (1.39 pt) or fewer. Several seeds (a "
               "sweep with seeds) tell you more than one run.")
