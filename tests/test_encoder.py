"""The encoder cut at fewer tokens than its export allows (research/d0021_token_length)."""
import pytest

from classifier_service.config import Config
from classifier_service.encoder import Encoder

LONG = "Explain every step of the proof and why each one holds. " * 30


def test_max_tokens_cuts_texts_shorter_and_names_itself_in_the_version():
    full = Encoder(Config().encoder_dir, "int8", threads=1)
    short = Encoder(Config().encoder_dir, "int8", threads=1, max_tokens=32)
    cut, whole = short.tokenize([LONG])[0], full.tokenize([LONG])[0]
    assert len(cut) == 32 and cut.truncated
    assert len(whole) == full.max_tokens > 32
    assert short.version != full.version and short.version.startswith(full.version)
    assert short.embed([LONG]).shape == (1, full.dimension)


@pytest.mark.parametrize("bad", [1, 0, 257])
def test_max_tokens_outside_the_export_is_refused(bad):
    with pytest.raises(ValueError, match="max_tokens"):
        Encoder(Config().encoder_dir, "int8", threads=1, max_tokens=bad)
