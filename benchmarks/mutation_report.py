"""`make mutation`'s report: per module, mutants generated, killed, timed out, survived and not covered by any
test, the kill rate, and one line for every mutant left alive with its diff and the reason it is left (REASONS
below: equivalent mutants, or not worth a test), from mutmut 3's result files in `mutants/`.

Kill rate = (killed + timed out) / every mutant that was judged, where a mutant no test runs ("no tests") counts as
alive: a function no test executes is not tested. Mutants mutmut did not get to (a run stopped early) are listed
under "not run" and left out of the rate.

  python -m benchmarks.mutation_report [--mutants mutants] [--out benchmarks/results/mutation] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ALIVE = ("survived", "no tests", "suspicious", "segfault", "error")
KILLED = ("killed", "timeout")

# Mutants read and judged, left without a test: mutant name (or a prefix: its function) -> why.
_EQ_DTYPE = "equivalent: the values are float32 / int either way for every input the callers pass"
_EQ_INT = "equivalent: float64 holds these integer sums exactly, so a float array gives the same values"
_EQ_STRICT = "equivalent: the zipped sequences have the same length (strict only guards a bug elsewhere)"
_EQ_SQL = "equivalent: SQL keywords and table names are case-insensitive"
_EQ_BROADCAST = "equivalent: (3, 1, 1) broadcasts against (N, 3, H, W) exactly as (1, 3, 1, 1) does"
REASONS: dict[str, str] = {
    # calibration/saturation.py
    "calibration.saturation.x__static_candidates__mutmut_25": "equivalent: candidates tied on (pair, size) are "
    "counted together or not at all, their order inside the tie is never read",
    "calibration.saturation.x__static_candidates__mutmut_27": "equivalent (see x__static_candidates__mutmut_25)",
    "calibration.saturation.x__static_candidates__mutmut_29": "equivalent (see x__static_candidates__mutmut_25)",
    "calibration.saturation.x__static_candidates__mutmut_39": _EQ_INT,
    "calibration.saturation.x__static_candidates__mutmut_42": _EQ_INT,
    "calibration.saturation.x__static_candidates__mutmut_45": _EQ_INT,
    "calibration.saturation.x_instrument__mutmut_69": _EQ_INT,
    "calibration.saturation.x_instrument__mutmut_93": _EQ_INT,
    "calibration.saturation.x_instrument__mutmut_95": _EQ_INT,
    "calibration.saturation.x_instrument__mutmut_100": _EQ_INT,
    "calibration.saturation.x_instrument__mutmut_73": "equivalent: a MatMul has no transB attribute (ONNX's "
    "checker refuses one), so only a Gemm can take the transposed branch",
    "calibration.saturation.x_instrument__mutmut_99": "equivalent: the scale is 0-d or 1-d, which reshape(None) "
    "leaves as the broadcast below expects",
    "calibration.saturation.x_instrument__mutmut_104": "equivalent: numpy reads any negative size as 'the rest'",
    "calibration.saturation.x_u8s8_reference__mutmut_": _EQ_INT + " (the test reference's own dtypes)",
    # toolkit/artifact.py
    "toolkit.artifact.xǁArtifactEditǁ__init____mutmut_": "equivalent: Artifact.write drops format, files and "
    "integrity from the body itself; `result` is set at commit before anything reads it",
    "toolkit.artifact.xǁArtifactEditǁdrop__mutmut_1": "equivalent: a dropped name is no longer known, and only known "
    "names are carried",
    "toolkit.artifact.xǁArtifactEditǁdrop__mutmut_5": "equivalent: a known name whose file is gone is forgotten at "
    "commit",
    "toolkit.artifact.xǁArtifactEditǁ_commit__mutmut_12": "equivalent: a data file left out of the model set comes "
    "back as an extra, and the written listing is the same",
    "toolkit.artifact.xǁArtifactEditǁ_commit__mutmut_13": "equivalent (see _commit__mutmut_12)",
    "toolkit.artifact.xǁArtifactEditǁ_commit__mutmut_14": "equivalent (see _commit__mutmut_12)",
    "toolkit.artifact.xǁArtifactEditǁ_commit__mutmut_21": "equivalent: a known file missing from the staging "
    "directory fails the commit either way (KeyError here, FileNotFoundError in write otherwise)",
    "toolkit.artifact.xǁArtifactEditǁ_commit__mutmut_25": "equivalent in results: without the known hashes every "
    "file is hashed again (slower, same listing)",
    "toolkit.artifact.xǁArtifactEditǁ_commit__mutmut_43": "equivalent: the staging tmp/ folder is removed whole at "
    "commit, so walking into it first changes nothing",
    "toolkit.artifact.xǁArtifactEditǁ_commit__mutmut_44": "equivalent (see _commit__mutmut_43)",
    # toolkit/data/images.py (decode_image)
    "toolkit.data.images.x_decode_image__mutmut_13": "not worth a test: it needs an image on which PIL warns about "
    "something other than a bomb while opening it",
    "toolkit.data.images.x_decode_image__mutmut_20": "equivalent in practice: PIL refuses a zero-sized image before "
    "this check (tried: PPM and PGM headers of width 0)",
    "toolkit.data.images.x_decode_image__mutmut_21": "equivalent in practice (see x_decode_image__mutmut_20)",
    "toolkit.data.images.x_decode_image__mutmut_23": "equivalent in practice (see x_decode_image__mutmut_20)",
    "toolkit.data.images.x_decode_image__mutmut_25": "equivalent in practice (see x_decode_image__mutmut_20)",
    "toolkit.data.images.x_decode_image__mutmut_26": "equivalent in practice (see x_decode_image__mutmut_20)",
    "toolkit.data.images.x_decode_image__mutmut_27": "equivalent in practice (see x_decode_image__mutmut_20)",
    "toolkit.data.images.x_decode_image__mutmut_28": "equivalent in practice (see x_decode_image__mutmut_20)",
    # toolkit/serving/client.py
    "toolkit.serving.client.xǁDetectClientǁ__init____mutmut_7": "equivalent: None and False are both false",
    "toolkit.serving.client.xǁDetectClientǁ__init____mutmut_9": "equivalent in use: connect() sets the id and the "
    "batch before anything reads them",
    "toolkit.serving.client.xǁDetectClientǁ__init____mutmut_10": "equivalent in use (see __init____mutmut_9)",
    "toolkit.serving.client.xǁDetectClientǁdetect__mutmut_36": "equivalent: only whether the list is empty is read",
    "toolkit.serving.client.xǁDetectClientǁdetect__mutmut_37": "equivalent (see detect__mutmut_36)",
    # toolkit/done_index.py
    "toolkit.done_index.xǁBloomǁ_positions__mutmut_": "equivalent in its guarantees: any consistent bit layout "
    "keeps 'no false negatives' (tested) and a false-positive rate under the tested 1%",
    "toolkit.done_index.xǁInFlightǁadd__mutmut_6": _EQ_SQL,
    "toolkit.done_index.xǁInFlightǁadd__mutmut_7": _EQ_SQL,
    "toolkit.done_index.xǁInFlightǁadd__mutmut_10": _EQ_SQL,
    "toolkit.done_index.xǁInFlightǁadd__mutmut_16": _EQ_SQL,
    "toolkit.done_index.xǁInFlightǁadd__mutmut_17": _EQ_SQL,
    "toolkit.done_index.xǁInFlightǁadd__mutmut_22": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁcount__mutmut_": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁstart__mutmut_8": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁstart__mutmut_9": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁreset__mutmut_2": "equivalent here: SQLite does not replay a journal that "
    "belongs to another database file (tried: tests/test_done_index.py restores one beside a reset index)",
    "toolkit.done_index.xǁDoneIndexǁreset__mutmut_3": "equivalent here (see reset__mutmut_2)",
    "toolkit.done_index.xǁDoneIndexǁreset__mutmut_4": "equivalent here (see reset__mutmut_2)",
    "toolkit.done_index.xǁDoneIndexǁreset__mutmut_5": "equivalent here (see reset__mutmut_2)",
    "toolkit.done_index.xǁDoneIndexǁreset__mutmut_9": "equivalent in results: open() sets `empty` from the table "
    "after a reset; a wrong value only costs lookups",
    "toolkit.done_index.xǁDoneIndexǁreset__mutmut_10": "equivalent in results (see reset__mutmut_9)",
    "toolkit.done_index.xǁDoneIndexǁstart__mutmut_3": "equivalent in results: a smaller filter has more false "
    "positives, each checked exactly against the table",
    "toolkit.done_index.xǁDoneIndexǁstart__mutmut_11": "equivalent: the fetch size only groups the rows",
    "toolkit.done_index.xǁDoneIndexǁstart__mutmut_18": "equivalent: Python's codec names are case-insensitive",
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_2": "equivalent in results: without the filter every key is "
    "looked up exactly",
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_16": "equivalent in results: checking more keys against the "
    "table finds only keys that are committed",
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_11": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_14": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_15": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_23": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_26": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_27": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_43": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_46": _EQ_STRICT,
    "toolkit.done_index.xǁDoneIndexǁclaim__mutmut_47": _EQ_STRICT,
    # toolkit/row_log.py
    "toolkit.row_log.x_encode_rows__mutmut_16": "equivalent: ensure_ascii=True is json.dumps's default",
    "toolkit.row_log.x_encode_rows__mutmut_24": "equivalent: Python's codec names are case-insensitive",
    "toolkit.row_log.x__key_bytes__mutmut_7": "equivalent: Python's codec names are case-insensitive",
    "toolkit.row_log.x_read_keys__mutmut_25": "equivalent: Python's codec names are case-insensitive",
    "toolkit.row_log.x_read_keys__mutmut_11": "equivalent on a UTF-8 locale (this machine's): the default "
    "encoding is the locale's",
    "toolkit.row_log.x_read_keys__mutmut_1": "equivalent: an empty range reads no bytes and yields no key",
    "toolkit.row_log.x_read_keys__mutmut_43": "equivalent: a range that starts at 0 and is not empty holds the "
    "header line",
    "toolkit.row_log.xǁ_Rangeǁreadinto__mutmut_1": "equivalent: with nothing left it reads 0 bytes either way",
    "toolkit.row_log.xǁ_Rangeǁreadinto__mutmut_2": "equivalent: ranges end at a row's newline, and a row without "
    "its last newline parses the same",
    "toolkit.row_log.xǁResumableOutputǁtodo__mutmut_6": "equivalent in results: the prefix's last chunk is then "
    "looked up in the index instead of skipped",
    "toolkit.row_log.xǁResumableOutputǁtodo__mutmut_14": "equivalent in results (see todo__mutmut_6)",
    "toolkit.row_log.xǁResumableOutputǁtodo__mutmut_36": _EQ_STRICT,
    "toolkit.row_log.xǁResumableOutputǁtodo__mutmut_39": _EQ_STRICT,
    "toolkit.row_log.xǁResumableOutputǁtodo__mutmut_40": _EQ_STRICT,
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_1": "equivalent in results: the index is rebuilt from the "
    "output every time (slower)",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_10": "equivalent in results: an index exactly up to date "
    "is rebuilt (slower)",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_20": "equivalent: read_keys reads anything but 'jsonl' as CSV",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_21": "equivalent (see _open_index__mutmut_20)",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_42": "equivalent: the batch boundary only groups the keys",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_43": "equivalent (see _open_index__mutmut_42)",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_45": "equivalent in results: the offsets of a batch are "
    "replaced by the final ones when the rebuild ends",
    "toolkit.row_log.xǁPredictionLogǁ_commit_files__mutmut_2": "equivalent: truncating a file to its own size "
    "changes nothing",
    "toolkit.row_log.x__read_meta__mutmut_17": "equivalent: Python's codec names are case-insensitive",
    # toolkit/attacks.py
    "toolkit.attacks.xǁPixelDetectorǁ__init____mutmut_17": _EQ_DTYPE + " (torch's default dtype)",
    "toolkit.attacks.xǁPixelDetectorǁ__init____mutmut_19": _EQ_DTYPE + " (torch's default dtype)",
    "toolkit.attacks.xǁPixelDetectorǁ__init____mutmut_39": _EQ_DTYPE + " (torch's default dtype)",
    "toolkit.attacks.xǁPixelDetectorǁ__init____mutmut_41": _EQ_DTYPE + " (torch's default dtype)",
    "toolkit.attacks.xǁPixelDetectorǁ__init____mutmut_34": _EQ_BROADCAST,
    "toolkit.attacks.x_attack_loss__mutmut_19": "equivalent: features are (N, D), so cosine_similarity's default "
    "dim=1 is dim=-1",
    "toolkit.attacks.x_attack_loss__mutmut_20": "equivalent: features are (N, D), so dim=+1 is dim=-1",
    "toolkit.attacks.x_pgd__mutmut_6": "equivalent in results: without the precomputed reference, attack_loss "
    "recomputes the same clean feature each step (the model is in eval mode); only slower",
    "toolkit.attacks.x_pgd__mutmut_7": "equivalent in results (see x_pgd__mutmut_6)",
    "toolkit.attacks.x_pgd__mutmut_8": "equivalent in results: a reference computed for the decision target is "
    "never read",
    "toolkit.attacks.x_pgd__mutmut_11": "equivalent in results (see x_pgd__mutmut_6 and _8)",
    "toolkit.attacks.x_pgd__mutmut_12": "equivalent in results (see x_pgd__mutmut_6)",
    "toolkit.attacks.x_pgd__mutmut_13": "equivalent in results (see x_pgd__mutmut_6)",
    "toolkit.attacks.x_pgd__mutmut_42": "equivalent: x_clean is read by attack_loss only when no reference is given, "
    "and pgd always gives one for the embedding target",
    "toolkit.attacks.x_pgd__mutmut_45": "equivalent in results (see x_pgd__mutmut_6)",
    "toolkit.attacks.x_pgd__mutmut_51": "equivalent in results (see x_pgd__mutmut_6)",
    "toolkit.attacks.x_quantise_in_ball__mutmut_11": "equivalent: c - eps <= 255 always, the upper clamp of the "
    "lower bound never acts",
    "toolkit.attacks.x_quantise_in_ball__mutmut_13": "equivalent (see x_quantise_in_ball__mutmut_11)",
    "toolkit.attacks.x_quantise_in_ball__mutmut_17": "equivalent (see x_quantise_in_ball__mutmut_11)",
    "toolkit.attacks.x_quantise_in_ball__mutmut_18": "equivalent: c + eps >= 0 always, the lower clamp of the "
    "upper bound never acts",
    # toolkit/data/images.py
    "toolkit.data.images.x__to_8bit__mutmut_29": "equivalent: a 2-D uint8 array becomes mode L without naming it",
    "toolkit.data.images.x__to_8bit__mutmut_31": "equivalent (see x__to_8bit__mutmut_29)",
    "toolkit.data.images.x__to_8bit__mutmut_33": "equivalent: for non-negative values, truncating a true division "
    "to uint8 is the floor division",
    "toolkit.data.images.x__to_8bit__mutmut_50": "not worth a test: float32 instead of float64 moves an 8-bit "
    "result only where the stretch lands within float32 rounding of a whole number",
    "toolkit.data.images.x__to_8bit__mutmut_52": "not worth a test (see x__to_8bit__mutmut_50)",
    "toolkit.data.images.x__to_8bit__mutmut_60": "equivalent: a constant image divides 0 by 0, and nan_to_num makes "
    "the NaNs the same zeros",
    "toolkit.data.images.x__to_8bit__mutmut_66": "equivalent (see x__to_8bit__mutmut_60)",
    "toolkit.data.images.x__to_8bit__mutmut_69": "equivalent (see x__to_8bit__mutmut_29)",
    "toolkit.data.images.x__to_8bit__mutmut_71": "equivalent (see x__to_8bit__mutmut_29)",
    "toolkit.data.images.x_read_file__mutmut_8": "not worth a test: close-on-exec only matters if this process "
    "execs between open and the close in `finally`",
    "toolkit.data.images.x_read_file__mutmut_10": "not worth a test (see x_read_file__mutmut_8)",
    "toolkit.data.images.x_read_file__mutmut_13": "not worth a test (see x_read_file__mutmut_8)",
    "toolkit.data.images.x_read_file__mutmut_14": "not worth a test (see x_read_file__mutmut_8)",
    "toolkit.data.images.x_read_file__mutmut_15": "not worth a test (see x_read_file__mutmut_8)",
    "toolkit.data.images.x_read_file__mutmut_16": "not worth a test (see x_read_file__mutmut_8)",
    "toolkit.data.images.x_read_file__mutmut_28": "equivalent: on Linux every non-regular file type has a name in "
    "_KINDS, so the default is never used",
    "toolkit.data.images.x_read_file__mutmut_30": "equivalent (see x_read_file__mutmut_28)",
    "toolkit.data.images.x_read_file__mutmut_32": "equivalent (see x_read_file__mutmut_28)",
    "toolkit.data.images.x_read_file__mutmut_33": "equivalent (see x_read_file__mutmut_28)",
    "toolkit.data.images.x_read_file__mutmut_47": "equivalent: reads of a regular file never block",
    "toolkit.data.images.x_read_file__mutmut_58": "equivalent: reading everything still finds more than max_bytes",
    "toolkit.data.images.x_read_file__mutmut_60": "equivalent: one byte more than max_bytes is enough to see growth",
    # toolkit/done_index.py
    "toolkit.done_index.xǁInFlightǁ__contains____mutmut_7": _EQ_SQL,
    "toolkit.done_index.xǁInFlightǁ__contains____mutmut_8": _EQ_SQL,
    # toolkit/evaluation.py
    "toolkit.evaluation.x_oracle_threshold__mutmut_2": _EQ_DTYPE,
    "toolkit.evaluation.x_oracle_threshold__mutmut_6": _EQ_DTYPE,
    "toolkit.evaluation.x_oracle_threshold__mutmut_8": _EQ_DTYPE,
    "toolkit.evaluation.x_oracle_threshold__mutmut_15": "equivalent: the order inside a tie does not change the "
    "counts at cuts between distinct values, the only cuts taken",
    "toolkit.evaluation.x_oracle_threshold__mutmut_17": "equivalent (see x_oracle_threshold__mutmut_15)",
    "toolkit.evaluation.x_oracle_threshold__mutmut_19": "equivalent (see x_oracle_threshold__mutmut_15)",
    "toolkit.evaluation.x_oracle_threshold__mutmut_51": "equivalent: cut 0 (everything fake) is always valid, and the "
    "best valid count is at least 1, so no invalid entry of +1 or -2 is ever the first maximum",
    "toolkit.evaluation.x_oracle_threshold__mutmut_52": "equivalent (see x_oracle_threshold__mutmut_51)",
    "toolkit.evaluation.x_threshold_at_fpr__mutmut_2": _EQ_DTYPE,
    "toolkit.evaluation.x_threshold_at_fpr__mutmut_7": _EQ_DTYPE,
    "toolkit.evaluation.x_threshold_at_fpr__mutmut_9": _EQ_DTYPE,
    "toolkit.evaluation.x_fpr_matched_map__mutmut_2": _EQ_DTYPE,
    "toolkit.evaluation.x_fpr_matched_map__mutmut_7": _EQ_DTYPE,
    "toolkit.evaluation.x_fpr_matched_map__mutmut_9": _EQ_DTYPE,
    "toolkit.evaluation.x_fpr_matched_map__mutmut_15": _EQ_DTYPE,
    "toolkit.evaluation.x_fpr_matched_map__mutmut_17": _EQ_DTYPE,
    "toolkit.evaluation.x_fpr_matched_map__mutmut_25": "equivalent: 257 quantiles of 257 values are the values",
    "toolkit.evaluation.x_map_threshold__mutmut_17": "equivalent: at the map's end, interpolation and the shift give "
    "the same value",
    "toolkit.evaluation.x_map_threshold__mutmut_24": "equivalent (see x_map_threshold__mutmut_17)",
    "toolkit.evaluation.x_rich_table__mutmut_27": "equivalent: rich renders an unknown justify as left",
    "toolkit.evaluation.x_rich_table__mutmut_28": "equivalent (see x_rich_table__mutmut_27)",
    "toolkit.evaluation.x_rich_table__mutmut_56": "equivalent: rich renders a None cell as an empty one",
    "toolkit.evaluation.x_rich_table__mutmut_71": "equivalent: rich parses style names case-insensitively",
    # toolkit/models/causal_clip.py
    "toolkit.models.causal_clip.xǁLinearProbeǁforward__mutmut_7": "equivalent: the head's output is (N, 1), where "
    "dimension 1 is dimension -1",
    "toolkit.models.causal_clip.xǁLinearProbeǁloss__mutmut_1": "equivalent: the probe has no temperature; tau is "
    "accepted for the training loop's one signature and never read",
    # toolkit/preprocess.py
    "toolkit.preprocess.x_noise_images__mutmut_22": _EQ_BROADCAST,
    "toolkit.preprocess.x_noise_images__mutmut_41": _EQ_BROADCAST,
    "toolkit.preprocess.x_noise_images__mutmut_27": "not worth a test: float64 statistics change the float32 result "
    "by at most one unit in the last place",
    "toolkit.preprocess.x_noise_images__mutmut_29": "not worth a test (see x_noise_images__mutmut_27)",
    "toolkit.preprocess.x_noise_images__mutmut_46": "not worth a test (see x_noise_images__mutmut_27)",
    "toolkit.preprocess.x_noise_images__mutmut_48": "not worth a test (see x_noise_images__mutmut_27)",
    # toolkit/models/causal_clip.py
    "toolkit.models.causal_clip.x_rbf_kernel__mutmut_14": "equivalent on a CPU: the mask is made on the default "
    "device, which is the features' device here",
    "toolkit.models.causal_clip.x_rbf_kernel__mutmut_17": "equivalent on a CPU (see x_rbf_kernel__mutmut_14)",
    "toolkit.models.causal_clip.x_rbf_kernel__mutmut_26": "equivalent on a CPU (see x_rbf_kernel__mutmut_14)",
    "toolkit.models.causal_clip.x_rbf_kernel__mutmut_29": "equivalent on a CPU (see x_rbf_kernel__mutmut_14)",
    "toolkit.models.causal_clip.x_hsic__mutmut_31": "equivalent: a column mean without keepdim broadcasts as the "
    "same row",
    "toolkit.models.causal_clip.x_hsic__mutmut_33": "equivalent (see x_hsic__mutmut_31)",
    "toolkit.models.causal_clip.x_hsic__mutmut_32": "equivalent: the Gram matrices are symmetric, so row and column "
    "means are the same vector and sum((K - 2 r 1') * L) = sum((K - 1 r' - r 1') * L)",
    "toolkit.models.causal_clip.x_hsic__mutmut_37": "equivalent (see x_hsic__mutmut_32)",
    "toolkit.models.causal_clip.x_hsic__mutmut_39": "equivalent (see x_hsic__mutmut_32)",
    "toolkit.models.causal_clip.x__fold_linear__mutmut_16": "equivalent: the head has one output, so summing over "
    "every axis sums the one row",
    "toolkit.models.causal_clip.x_gumbel_keep_mask__mutmut_8": "equivalent: the logits are 1-d, so axis 1 is the "
    "last axis",
    "toolkit.models.causal_clip.x_gumbel_keep_mask__mutmut_30": "equivalent: dim=-1 is gumbel_softmax's default",
    "toolkit.models.causal_clip.xǁCausalCLIPǁ__init____mutmut_40": "equivalent: torch reads persistent=None as false",
    "toolkit.models.causal_clip.xǁCausalCLIPǁforward__mutmut_5": "equivalent: the head's output is (B, 1), where "
    "axis 1 is the last axis",
    "toolkit.models.causal_clip.xǁCausalCLIPǁloss__mutmut_27": "equivalent (see forward__mutmut_5)",
    "toolkit.models.causal_clip.xǁCausalCLIPǁloss__mutmut_64": "equivalent (see forward__mutmut_5)",
    "toolkit.models.causal_clip.xǁCausalCLIPǁloss__mutmut_12": "equivalent: hard=False is gumbel_keep_mask's "
    "default and the default config's straight_through",
    # toolkit/done_index.py, toolkit/locks.py
    "toolkit.done_index.x__b__mutmut_6": "equivalent: Python's codec names are case-insensitive",
    "toolkit.done_index.xǁDoneIndexǁdone__mutmut_25": "equivalent: Python's codec names are case-insensitive",
    "toolkit.done_index.xǁInFlightǁdifference_update__mutmut_10": _EQ_SQL,
    "toolkit.done_index.xǁInFlightǁdifference_update__mutmut_11": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁopen__mutmut_5": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁopen__mutmut_16": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁopen__mutmut_17": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁadd__mutmut_8": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁadd__mutmut_14": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁadd__mutmut_15": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁadd__mutmut_21": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁadd__mutmut_26": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_22": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_23": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_26": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_27": _EQ_SQL,
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_9": "equivalent: SQLite reads pragma names and values "
    "case-insensitively",
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_10": "equivalent (see _connect__mutmut_9)",
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_12": "equivalent (see _connect__mutmut_9)",
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_13": "equivalent (see _connect__mutmut_9)",
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_15": "equivalent (see _connect__mutmut_9)",
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_16": "equivalent (see _connect__mutmut_9)",
    "toolkit.done_index.xǁDoneIndexǁ_connect__mutmut_18": "equivalent (see _connect__mutmut_9)",
    "toolkit.done_index.xǁDoneIndexǁ__init____mutmut_4": "equivalent in use: open() sets `empty` from the table "
    "before anything reads it",
    "toolkit.done_index.xǁDoneIndexǁ__init____mutmut_5": "equivalent in use (see __init____mutmut_4)",
    "toolkit.done_index.xǁDoneIndexǁadd__mutmut_28": "equivalent: None and False are both false",
    "toolkit.done_index.xǁDoneIndexǁdone__mutmut_1": "equivalent in results: an index empty at the start then looks "
    "the keys up and finds none (slower)",
    "toolkit.done_index.xǁDoneIndexǁdone__mutmut_9": "equivalent in results: a step of 1 looks up overlapping "
    "windows of the keys into the same set (slower)",
    "toolkit.locks.xǁexclusive_lockǁ__enter____mutmut_11": "not worth a test: the lock file would have to become "
    "unopenable in the instant between the refused flock and reading the holder's pid",
    "toolkit.locks.xǁexclusive_lockǁ__enter____mutmut_12": "not worth a test (see __enter____mutmut_11)",
    "toolkit.locks.xǁexclusive_lockǁ__enter____mutmut_25": "equivalent: a pid is far shorter than 64 bytes",
    "toolkit.locks.xǁexclusive_lockǁ__enter____mutmut_37": "equivalent: None and False are both false",
    "toolkit.locks.xǁexclusive_lockǁ__enter____mutmut_45": "equivalent: the pid written next from offset 0 covers "
    "the one byte kept (a pid has at least one digit)",
    # toolkit/row_log.py
    "toolkit.row_log.xǁResumableOutputǁ__init____mutmut_6": "equivalent in use: open() sets the counts before they "
    "are read",
    "toolkit.row_log.xǁResumableOutputǁ__init____mutmut_7": "equivalent in use (see __init____mutmut_6)",
    "toolkit.row_log.xǁResumableOutputǁ__init____mutmut_8": "equivalent: only whether a prefix was recorded is read, "
    "and '' and None are both false",
    "toolkit.row_log.xǁPredictionLogǁ__init____mutmut_2": "not worth a test: the commit cadence's defaults (8192 "
    "rows, 1 s) move when rows become durable, not which rows are written; the cadence itself is tested",
    "toolkit.row_log.xǁPredictionLogǁ__init____mutmut_3": "not worth a test (see PredictionLog __init____mutmut_2)",
    "toolkit.row_log.xǁPredictionLogǁ__init____mutmut_19": "not worth a test: the name in the lock's message (the "
    "message is tested on the lock itself, tests/test_done_index.py)",
    "toolkit.row_log.xǁPredictionLogǁ__init____mutmut_22": "not worth a test (see PredictionLog __init____mutmut_19)",
    "toolkit.row_log.xǁPredictionLogǁ_close_files__mutmut_1": "equivalent in use: nothing reads the files after they "
    "are closed",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_5": "equivalent here: SQLite ignores a -wal / -shm file left "
    "from another database (see DoneIndex reset__mutmut_2)",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_6": "equivalent here (see _open__mutmut_5)",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_7": "equivalent here (see _open__mutmut_5)",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_8": "equivalent here (see _open__mutmut_5)",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_63": "not worth a test: only an empty (or one-byte) output file "
    "left without its meta tells them apart, refused as not written by infer either way once it holds a row",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_64": "not worth a test (see _open__mutmut_63)",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_95": "not testable without a race: a link at the output is "
    "refused before this open (tested); the no-follow opener closes the window between that check and this open",
    "toolkit.row_log.xǁPredictionLogǁ_open__mutmut_99": "not testable without a race (see _open__mutmut_95)",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_6": "equivalent: the recorded offsets and the committed "
    "ones name the same outputs, so the default is never used",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_8": "equivalent (see _open_index__mutmut_6)",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_9": "equivalent (see _open_index__mutmut_6)",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_50": "equivalent in results: an index recorded without its "
    "offsets is rebuilt from the output at the next open (slower)",
    "toolkit.row_log.xǁPredictionLogǁ_commit_files__mutmut_15": "not worth a test: an OSError without a strerror",
    # toolkit/artifact.py
    "toolkit.artifact.x__digest__mutmut_9": "equivalent: ensure_ascii=True is json.dumps's default",
    "toolkit.artifact.x__read_manifest__mutmut_22": "equivalent: Python's codec names are case-insensitive",
    "toolkit.artifact.x__check_seal__mutmut_40": "not worth a test: how the message prints a nested file name",
    "toolkit.artifact.x__check_seal__mutmut_41": "not worth a test (see _check_seal__mutmut_40)",
    "toolkit.artifact.x__check_seal__mutmut_43": "not worth a test (see _check_seal__mutmut_40)",
    "toolkit.artifact.x__check_seal__mutmut_61": "not worth a test: the separator between the problems a message lists",
    "toolkit.artifact.xǁArtifactǁ_verify_files__mutmut_11": "not worth a test: a listed file that cannot be hashed "
    "for a reason other than those tested (missing, a link, not a regular file)",
    "toolkit.artifact.xǁArtifactǁ_verify_files__mutmut_12": "not worth a test (see _verify_files__mutmut_11)",
    "toolkit.artifact.xǁArtifactǁ_verify_files__mutmut_28": "not worth a test: the end of a message's advice",
    "toolkit.artifact.xǁArtifactǁ_verify_files__mutmut_29": "not worth a test (see _verify_files__mutmut_28)",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_19": "equivalent for every body the toolkit writes: its format is this "
    "version's, and files and integrity are set after the filter",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_20": "equivalent (see write__mutmut_19)",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_21": "equivalent (see write__mutmut_19)",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_22": "equivalent (see write__mutmut_19)",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_23": "equivalent (see write__mutmut_19)",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_24": "equivalent (see write__mutmut_19)",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_26": "equivalent in results: every file is hashed again instead of "
    "taking the hash its caller knows (slower)",
    "toolkit.artifact.xǁArtifactǁwrite__mutmut_38": "not worth a test: the path only names the file in the message "
    "about a body the toolkit itself built",
    # toolkit/compare.py, toolkit/evaluation.py, toolkit/preprocess.py
    "toolkit.compare.xǁComparatorǁcompare__mutmut_1": "not worth a test: the default only labels the record of a "
    "caller that names no engine; every caller names it",
    "toolkit.compare.xǁComparatorǁcompare__mutmut_5": "not worth a test: the text of a programming error",
    "toolkit.compare.xǁComparatorǁcompare__mutmut_6": "not worth a test (see compare__mutmut_5)",
    "toolkit.evaluation.x_binary_metrics__mutmut_2": _EQ_DTYPE,
    "toolkit.evaluation.x_binary_metrics__mutmut_6": _EQ_DTYPE,
    "toolkit.evaluation.x_binary_metrics__mutmut_8": _EQ_DTYPE,
    "toolkit.evaluation.x_binary_metrics__mutmut_10": _EQ_DTYPE,
    "toolkit.preprocess.xǁPreprocessConfigǁfrom_open_clip__mutmut_9": "equivalent: open_clip's image sizes are "
    "square, so both entries are the same",
    "toolkit.preprocess.x_resize_and_crop__mutmut_8": "equivalent: this branch resizes a square image to a square, "
    "where Pillow's default (bicubic) and the configured filter give the same pixels when the size is unchanged",
    "toolkit.preprocess.x_resize_and_crop__mutmut_10": "equivalent (see x_resize_and_crop__mutmut_8)",
    "toolkit.preprocess.x_resize_and_crop__mutmut_15": "equivalent: for a square image both orders are the same",
    "toolkit.preprocess.x_resize_and_crop__mutmut_23": "equivalent (see x_resize_and_crop__mutmut_15)",
    "toolkit.preprocess.x_to_array__mutmut_5": "equivalent: an RGB Pillow image converts to uint8 either way",
    "toolkit.preprocess.x_to_array__mutmut_7": "equivalent (see x_to_array__mutmut_5)",
    # toolkit/manifest.py
    "toolkit.manifest.xǁ_Checkerǁneed__mutmut_12": "not worth a test: where a shown value is cut (80 or 81 characters)",
    "toolkit.manifest.x_check_manifest__mutmut_49": "not worth a test: where a message is cut (160 or 161 characters)",
    "toolkit.manifest.x_check_manifest__mutmut_129": "not worth a test (see x_check_manifest__mutmut_49)",
    "toolkit.manifest.x_check_manifest__mutmut_209": "not worth a test (see x_check_manifest__mutmut_49)",
    "toolkit.manifest.x_check_manifest__mutmut_249": "not worth a test (see x_check_manifest__mutmut_49)",
    "toolkit.manifest.x_check_manifest__mutmut_314": "not worth a test (see x_check_manifest__mutmut_49)",
    "toolkit.manifest.x_check_manifest__mutmut_90": "equivalent: data_file is the last key of the loop, so break "
    "and continue both end it",
    "toolkit.manifest.x_check_manifest__mutmut_185": "not worth a test: a 1-pixel input size is legal but never used",
    "toolkit.manifest.x_check_manifest__mutmut_255": "equivalent: None and False are both false",
    "toolkit.manifest.x_check_manifest__mutmut_289": "equivalent: None and False are both false",
    "toolkit.manifest.x_check_manifest__mutmut_324": "equivalent: None and False are both false",
    "toolkit.manifest.x_check_manifest__mutmut_339": "equivalent: None and False are both false",
    # toolkit/attacks.py
    "toolkit.attacks.x_pgd__mutmut_43": "equivalent: attack_loss reads x_clean only to compute the reference "
    "feature when none is given, and one is given for the embedding target (the decision target reads neither)",
    "toolkit.attacks.x_pgd__mutmut_46": "equivalent: without the reference, attack_loss computes the same one from "
    "x_clean",
    "toolkit.attacks.x_pgd__mutmut_52": "equivalent (see x_pgd__mutmut_46)",
    "toolkit.attacks.x_pgd__mutmut_57": "not worth a test: the attacker's seeds only have to differ from each other "
    "and from the evaluation's 0 (tested); where they start is arbitrary",
    "toolkit.attacks.x_pgd__mutmut_63": "equivalent: the step takes the gradient's sign, which a positive scale "
    "(times or over eot) does not change",
    "toolkit.attacks.x_pgd__mutmut_67": "equivalent (see x_pgd__mutmut_43)",
    "toolkit.attacks.x_pgd__mutmut_70": "equivalent (see x_pgd__mutmut_46)",
    "toolkit.attacks.x_pgd__mutmut_76": "equivalent (see x_pgd__mutmut_46)",
    "toolkit.models.causal_clip.x__bandwidth__mutmut_2": "equivalent: rbf_kernel converts a bandwidth other than "
    "'median' with float() itself",
    "toolkit.row_log.x_read_keys__mutmut_15": "equivalent on a UTF-8 locale (this machine's): the default encoding "
    "is the locale's",
    "toolkit.row_log.xǁPredictionLogǁ_open_index__mutmut_23": "not judged: mutmut's worker fails on this mutant "
    "(exit 255) in two runs, so its tests never gave a verdict; counted alive",
    # export/tensorrt.py
    # toolkit/tuning.py
    "toolkit.tuning.x_write_record__mutmut_18": "equivalent: without it, record_path computes the same machine's "
    "fingerprint again",
    "toolkit.tuning.x_write_record__mutmut_20": "equivalent (see x_write_record__mutmut_18)",
}


# mutmut 3.8.1's exit codes (mutmut.stats.status_by_exit_code), written out so that the report and its test run
# without mutmut installed; except 255 / -1, which mutmut files under "timeout" but is what a worker returns when
# running the tests raised: for example when a test id from the stats pass no longer exists (an id holding an
# object's address, which changes in every process, did that to all 460 manifest mutants of one run). Such a
# mutant was never tested, so it counts as alive ("error"), never as killed.
_STATUS_BY_EXIT_CODE = {
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 2: "interrupted", 34: "skipped",
    35: "suspicious", 36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout", 152: "timeout",
    -11: "segfault", -9: "segfault", 255: "error", -1: "error",
}  # fmt: skip


def _status(code) -> str:
    return "not run" if code is None else _STATUS_BY_EXIT_CODE.get(code, "suspicious")


def collect(mutants: Path) -> tuple[dict[str, Counter], dict[str, list[tuple[str, str]]]]:
    """-> (module -> Counter of statuses, module -> [(mutant, status)] of those left alive)."""
    per: dict[str, Counter] = {}
    alive: dict[str, list[tuple[str, str]]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        data = json.loads(meta.read_text())
        c = per.setdefault(module, Counter())
        for name, code in data.get("exit_code_by_key", {}).items():
            s = _status(code)
            c[s] += 1
            if s in ALIVE:
                alive.setdefault(module, []).append((name, s))
    return per, alive


def _diff(name: str, module: str) -> str:
    try:  # mutmut is installed by `make mutation` only; without it the report still counts
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        text = get_diff_for_mutant(name, path=module)
    except Exception as e:  # a report line, never a crash of the report
        return f"(diff unavailable: {type(e).__name__})"
    lines = [ln for ln in text.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return " / ".join(ln.strip() for ln in lines)[:220].replace("`", "'")


def _reason(name: str, status: str) -> str:
    """The reason recorded for this mutant: its exact name, or its function's (a key ending in `__mutmut_`).
    A numbered key never covers another number (`..._mutmut_1` is not `..._mutmut_12`)."""
    if name in REASONS:
        return REASONS[name]
    for key, why in REASONS.items():
        if key.endswith("__mutmut_") and name.startswith(key):
            return why
    return "no test runs this function" if status == "no tests" else "not yet judged"


def rate(c: Counter) -> float:
    judged = sum(c[s] for s in KILLED + ALIVE)
    return sum(c[s] for s in KILLED) / judged if judged else float("nan")


def main(argv: list[str] | None = None) -> None:
    from benchmarks.environment import cpu_line, environment
    from toolkit.io import write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--out", type=Path, default=RESULTS / "mutation")
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the mutmut run, for the report")
    ap.add_argument("--command", default="make mutation")
    ap.add_argument("--note", default="", help="a sentence on how the results were reached (reruns, ...)")
    args = ap.parse_args(argv)
    per, alive = collect(args.mutants)
    env = environment()
    took = f" in {args.seconds / 60:.1f} min" if args.seconds else ""
    lines = ["# Mutation testing (mutmut 3, `make mutation`)", "",
             f"Command: `{args.command}`{took}.  ",
             f"Machine: {cpu_line(env)}.", "",
             *([args.note, ""] if args.note else []),
             "Each mutant runs the tests that executed its function (mutmut's stats pass over the test files in "
             "pyproject's [tool.mutmut]). Kill rate = (killed + timed out) / judged, where a mutant that no test runs "
             "counts as alive, and so does one whose tests mutmut could not run (\"error\").", "",
             "| module | mutants | killed | timed out | survived | no tests | error | not run | kill rate |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    tot = Counter()
    for module, c in per.items():
        lines.append(f"| {module} | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{c['no tests']} | {c['error']} | {c['not run']} | {100 * rate(c):.1f}% |")  # fmt: skip
        tot.update(c)
    lines.append(f"| **all** | {sum(tot.values())} | {tot['killed']} | {tot['timeout']} | {tot['survived']} | "
                 f"{tot['no tests']} | {tot['error']} | {tot['not run']} | **{100 * rate(tot):.1f}%** |")  # fmt: skip
    n_alive = sum(len(v) for v in alive.values())
    lines += ["", f"## Mutants left alive ({n_alive})", ""]
    for module, names in alive.items():
        for name, status in names:
            lines.append(f"- `{name}` ({status}): `{_diff(name, module)}` — {_reason(name, status)}")
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json(args.out.with_suffix(".json"), {
        "command": args.command, "seconds": args.seconds, "note": args.note,
        "per_module": {m: dict(c) for m, c in per.items()},
        "kill_rate": rate(tot), "alive": {m: [{"mutant": n, "status": s, "reason": _reason(n, s)} for n, s in v]
                                          for m, v in alive.items()}, "environment": env})  # fmt: skip
    print("\n".join(lines[: 11 + len(per)]))


if __name__ == "__main__":
    main()
