"""Find the sample behind a decode failure, when the decoder's own error does not name it.

DALI's decoder reports some failures with the sample's source (`fold0-000003.tar:1536:r0000042.jpg`) and others
only as "nvImageCodec failure"; `explain_failure` turns either into an HnpError naming shard and key.
"""

from __future__ import annotations

from collections.abc import Sequence

from hnp.bars import progress_bar
from hnp.errors import HnpError
from hnp.shard_format import IMAGE_EXT, find_source
from pipeline.dataset import SampleEntry
from pipeline.transforms import decode_gray


def explain_failure(err: Exception, samples: Sequence[SampleEntry]) -> HnpError:
    """An HnpError naming the shard and sample key of a pipeline failure.

    Args:
        err: what the pipeline raised.
        samples: the samples the failing run can have read; decoded one by one when `err` names none.
    """
    detail = dali_message(str(err))
    source = find_source(str(err))
    if source is not None:
        shard, key = source
        return HnpError(f"{shard}: sample {key}: undecodable image ({detail})")
    bad = find_bad_sample(samples)
    if bad is not None:
        return HnpError(f"{bad}; the pipeline said: {detail}")
    shards = sorted({str(sample.shard) for sample in samples})
    return HnpError(f"pipeline failed reading {', '.join(shards)}; no undecodable sample found among the "
                    f"{len(samples)} it was reading: {detail}")


def dali_message(text: str) -> str:
    """The operator's own words from a DALI error, without the pipeline-definition traceback around them."""
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    text = text.split("Current pipeline object is no longer valid", 1)[0]
    return " ".join(text.split()) or "unknown error"


def find_bad_sample(samples: Sequence[SampleEntry]) -> str | None:
    """Read and decode each sample's image until one fails; returns that failure's message or None."""
    for sample in progress_bar(samples, desc="looking for the bad sample", unit="img", leave=False):
        try:
            decode_gray(sample.read(IMAGE_EXT), where=f"{sample.shard}: sample {sample.key}")
        except HnpError as err:
            return str(err)
    return None
