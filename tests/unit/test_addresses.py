"""Address normalisation: lower case, IDNA 2008 (UTS 46) domains."""

from __future__ import annotations

import pytest

from gateway.addresses import normalise


@pytest.mark.parametrize("written, stored", [
    ("kunde@faß.example", "kunde@xn--fa-hia.example"),
    ("Kunde@XN--FA-HIA.example", "kunde@xn--fa-hia.example"),
    ("kunde@fass.example", "kunde@fass.example"),
    ("x@Bücher.DE.", "x@xn--bcher-kva.de"),
    ("x@☃.net", "x@☃.net"),  # IDNA 2008 refuses symbols: kept as written, lower-cased
])
def test_normalise_uses_idna_2008(written, stored):
    assert normalise(written) == stored
