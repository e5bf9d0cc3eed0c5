"""The per-set data cards of the classification apps load strictly and agree with the readers' label orders."""

from __future__ import annotations

import pytest

from medvit.apps.cxr.labels import CHESTXRAY14_FINDINGS, CHEXPERT_COMPETITION
from medvit.shared.data.cards import load_card

CXR_CARDS = ("chestxray14", "chexpert", "mimic-cxr-jpg")
EYE_CARDS = ("aptos-2019", "eyepacs", "idrid", "messidor-2", "oct2017", "octid", "refuge")


@pytest.mark.parametrize("card_id", CXR_CARDS + EYE_CARDS)
def test_cards_load_with_access_and_licence(card_id: str) -> None:
    card = load_card(card_id)
    assert card.id == card_id and "classification" in card.tasks
    assert card.access and card.license and card.citation
    assert card.layout in ("csv-labels", "image-folder")
    assert any(use in ("cxr", "eye") for use in card.used_by)


def test_label_orders_match_the_readers() -> None:
    assert list(load_card("chestxray14").labels or {}) == list(CHESTXRAY14_FINDINGS)
    assert list(load_card("chexpert").labels or {}) == list(CHEXPERT_COMPETITION)
    assert list(load_card("oct2017").labels or {}) == ["CNV", "DME", "DRUSEN", "NORMAL"]  # sorted folder names
    for dr in ("aptos-2019", "eyepacs", "idrid"):
        assert list((load_card(dr).labels or {}).values()) == [0, 1, 2, 3, 4]
