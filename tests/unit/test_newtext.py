"""The new text of a message: quoted history and signature split off
(gateway/parse/newtext.py), on bodies as the mail clients write them."""

from __future__ import annotations

import time

import pytest

from gateway.message import TextSplit
from gateway.parse import newtext
from gateway.parse.newtext import SCAN_MAX, split

GMAIL_HEADER = "On Mon, Nov 30, 2026 at 10:00 AM Taro Hashimoto <hashimoto@zylker.example> wrote:"


# Replies ----------------------------------------------------------------------------


def test_gmail_english_reply() -> None:
    body = (
        "Hi Taro,\n"
        "\n"
        "The revised quotation looks good. Please send the contract.\n"
        "\n"
        "Best regards,\n"
        "Charles\n"
        "\n"
        f"{GMAIL_HEADER}\n"
        "\n"
        "> Dear Charles,\n"
        ">\n"
        "> Please find the revised quotation attached.\n"
        ">\n"
        "> Regards,\n"
        "> Taro\n"
    )
    assert split(body) == TextSplit(
        "Hi Taro,\n\nThe revised quotation looks good. Please send the contract.",
        GMAIL_HEADER,
        "Best regards,\nCharles",
    )


def test_gmail_english_reply_with_wrapped_header() -> None:
    body = (
        "Confirmed.\n"
        "\n"
        "On Mon, Nov 30, 2026 at 10:00 AM Taro Hashimoto <\n"
        "hashimoto@zylker.example> wrote:\n"
        "\n"
        "> Can you confirm the order?\n"
    )
    assert split(body) == TextSplit("Confirmed.", "On Mon, Nov 30, 2026 at 10:00 AM Taro Hashimoto <")


def test_gmail_japanese_reply() -> None:
    body = (
        "橋本様\n"
        "\n"
        "お見積りありがとうございます。内容を確認しました。\n"
        "\n"
        "2026年11月30日(月) 10:00 山田 太郎 <yamada@customer.example>:\n"
        "\n"
        "> 山田様\n"
        ">\n"
        "> お見積りを添付いたします。\n"
    )
    assert split(body) == TextSplit(
        "橋本様\n\nお見積りありがとうございます。内容を確認しました。",
        "2026年11月30日(月) 10:00 山田 太郎 <yamada@customer.example>:",
    )


def test_gmail_japanese_reply_written_with_wrote() -> None:
    # A Japanese date with the English "wrote:" (mixed language settings); no
    # ">" lines below it, so only the header pattern can split here.
    body = (
        "承知しました。\n"
        "\n"
        "2026年11月30日(月) 10:00 山田 太郎 <yamada@customer.example> wrote:\n"
        "\n"
        "橋本様\n"
        "納期を教えてください。\n"
    )
    assert split(body) == TextSplit(
        "承知しました。", "2026年11月30日(月) 10:00 山田 太郎 <yamada@customer.example> wrote:"
    )


def test_outlook_english_reply() -> None:
    body = (
        "Hi Taro,\n"
        "\n"
        "Thanks for the update. We will review it on Monday.\n"
        "\n"
        "Charles\n"
        "\n"
        "________________________________\n"
        "From: Taro Hashimoto <hashimoto@zylker.example>\n"
        "Sent: Monday, November 30, 2026 10:00 AM\n"
        "To: Charles Stone <charless@zillum.com>\n"
        "Subject: Quotation Q-2026-118\n"
        "\n"
        "Dear Charles,\n"
        "\n"
        "Please find the quotation attached.\n"
    )
    assert split(body) == TextSplit(
        "Hi Taro,\n\nThanks for the update. We will review it on Monday.\n\nCharles",
        "From: Taro Hashimoto <hashimoto@zylker.example>",
    )


def test_old_outlook_original_message() -> None:
    body = (
        "Taro,\n"
        "\n"
        "Confirmed, see you on Friday.\n"
        "\n"
        "-----Original Message-----\n"
        "From: Taro Hashimoto [mailto:hashimoto@zylker.example]\n"
        "Sent: Monday, November 30, 2026 10:00 AM\n"
        "To: Charles Stone\n"
        "Subject: Meeting\n"
        "\n"
        "Can we meet on Friday?\n"
    )
    assert split(body) == TextSplit("Taro,\n\nConfirmed, see you on Friday.", "-----Original Message-----")


@pytest.mark.parametrize(
    "marker", ["-----元のメッセージ-----", "----- Original Message -----", "--------Original Message--------"]
)
def test_original_message_variants(marker: str) -> None:
    body = f"了解です。\n\n{marker}\n差出人: 山田 太郎\n件名: 納期\n\n納期を教えてください。\n"
    assert split(body) == TextSplit("了解です。", marker)


def test_japanese_outlook_reply() -> None:
    body = (
        "山田様\n"
        "\n"
        "お世話になっております。ゾルカーの橋本です。\n"
        "承知いたしました。\n"
        "\n"
        "________________________________\n"
        "差出人: 山田 太郎 <yamada@customer.example>\n"
        "送信日時: 2026年11月30日 10:00\n"
        "宛先: 橋本 太郎 <hashimoto@zylker.example>\n"
        "件名: お見積りのご依頼\n"
        "\n"
        "橋本様\n"
        "\n"
        "お見積りをお願いします。\n"
    )
    assert split(body) == TextSplit(
        "山田様\n\nお世話になっております。ゾルカーの橋本です。\n承知いたしました。",
        "差出人: 山田 太郎 <yamada@customer.example>",
    )


def test_japanese_outlook_reply_full_width_colons_without_rule() -> None:
    body = (
        "承知いたしました。\n"
        "\n"
        "送信者：山田 太郎\n"
        "送信日時：2026年11月30日 10:00\n"
        "宛先：橋本 太郎\n"
        "件名：納期\n"
        "\n"
        "納期を教えてください。\n"
    )
    assert split(body) == TextSplit("承知いたしました。", "送信者：山田 太郎")


def test_a_single_japanese_header_line_is_no_quote() -> None:
    body = "差出人: 山田 太郎 とありますが、宛先は営業部でお願いします。\n\nよろしくお願いします。"
    assert split(body) == TextSplit(body)


def test_german_outlook_reply_with_sign_off() -> None:
    body = (
        "Hallo Taro,\n"
        "\n"
        "passt, wir bestellen.\n"
        "\n"
        "Viele Grüße\n"
        "Karl\n"
        "\n"
        "Von: Taro Hashimoto <hashimoto@zylker.example>\n"
        "Gesendet: Montag, 30. November 2026 10:00\n"
        "An: Karl Stein <karl@zillum.com>\n"
        "Betreff: Angebot\n"
        "\n"
        "Hallo Karl,\n"
    )
    assert split(body) == TextSplit(
        "Hallo Taro,\n\npasst, wir bestellen.", "Von: Taro Hashimoto <hashimoto@zylker.example>", "Viele Grüße\nKarl"
    )


def test_gmail_spanish_reply() -> None:
    header = "El lun, 30 nov 2026 a las 10:00, Carlos Stone (<carlos@zillum.com>) escribió:"
    body = f"Vale, gracias.\n\n{header}\n\n> Hola Taro,\n"
    assert split(body) == TextSplit("Vale, gracias.", header)


def test_apple_mail_reply() -> None:
    body = (
        "Sounds good, Friday it is.\n"
        "\n"
        "On 30 Nov 2026, at 10:00, Charles Stone <charless@zillum.com> wrote:\n"
        "\n"
        "> Shall we meet on Friday?\n"
    )
    assert split(body) == TextSplit(
        "Sounds good, Friday it is.", "On 30 Nov 2026, at 10:00, Charles Stone <charless@zillum.com> wrote:"
    )


def test_thunderbird_reply() -> None:
    body = "I have updated the order.\n\nOn 30/11/2026 10:00, Charles Stone wrote:\n> Please add two more units.\n"
    assert split(body) == TextSplit("I have updated the order.", "On 30/11/2026 10:00, Charles Stone wrote:")


def test_quoted_block_without_header() -> None:
    body = "I agree.\n\n> Can we move the meeting to Friday?\n> Taro\n"
    assert split(body) == TextSplit("I agree.", "> Can we move the meeting to Friday?")


def test_inline_reply_is_kept_whole() -> None:
    body = "> Can we meet on Friday?\nYes, at 10:00.\n\n> And the price?\nAs quoted.\n"
    assert split(body) == TextSplit(body.strip())


# Forwards ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker, block",
    [
        (
            "---------- Forwarded message ---------",
            "From: Charles Stone <charless@zillum.com>\nDate: Mon, Nov 30, 2026 at 10:00 AM\n"
            "Subject: Delivery date\nTo: <sales@zylker.example>\n\n\nWhen can you deliver?\n",
        ),
        (
            "Begin forwarded message:",
            "\nFrom: Charles Stone <charless@zillum.com>\nSubject: Delivery date\n"
            "Date: 30 November 2026 at 10:00:00 JST\nTo: sales@zylker.example\n\nWhen can you deliver?\n",
        ),
        (
            "-------- Forwarded Message --------",
            "Subject: \tDelivery date\nDate: \tMon, 30 Nov 2026 10:00:00 +0900\n"
            "From: \tCharles Stone <charless@zillum.com>\nTo: \tsales@zylker.example\n\nWhen can you deliver?\n",
        ),
        (
            "---------- 転送メッセージ ----------",
            "From: 山田 太郎 <yamada@customer.example>\nDate: 2026年11月30日(月) 10:00\n"
            "Subject: 納期について\nTo: <sales@zylker.example>\n\n納期を教えてください。\n",
        ),
    ],
)
def test_forward_note_above_the_forward_marker(marker: str, block: str) -> None:
    body = f"Taro, FYI: the customer asks about the delivery date.\n\n{marker}\n{block}"
    assert split(body) == TextSplit("Taro, FYI: the customer asks about the delivery date.", marker)


def test_forward_without_note() -> None:
    body = "---------- Forwarded message ---------\nFrom: Charles Stone <charless@zillum.com>\nSubject: Hi\n\nHello\n"
    assert split(body) == TextSplit("", "---------- Forwarded message ---------")


# Signatures -------------------------------------------------------------------------


def test_dash_dash_signature() -> None:
    body = (
        "Hi Taro,\n"
        "\n"
        "The delivery is confirmed for Friday.\n"
        "\n"
        "-- \n"
        "Charles Stone\n"
        "Sales Manager, Zillum\n"
        "+1 555 0100\n"
    )
    assert split(body) == TextSplit(
        "Hi Taro,\n\nThe delivery is confirmed for Friday.",
        "",
        "-- \nCharles Stone\nSales Manager, Zillum\n+1 555 0100",
    )


def test_dash_dash_followed_by_a_long_text_is_no_signature() -> None:
    body = "Notes of the meeting\n--\n" + "\n".join(f"Item {n}: done" for n in range(1, 17))
    assert split(body) == TextSplit(body)


def test_dash_dash_signature_of_fifteen_lines() -> None:
    # Longer than a signature the library may cut (12 lines), within the delimiter's 15.
    signature = "-- \n" + "\n".join(f"Zillum office {n}: +1 555 01{n:02}" for n in range(1, 15))
    body = f"See you on Friday.\n\n{signature}\n"
    assert split(body) == TextSplit("See you on Friday.", "", signature)


def test_sign_off_above_an_underscore_rule() -> None:
    # The library deletes a line of 32 underscores and the blank line above it from
    # its copy of the text; the signature it finds must still be ours.
    rule = "_" * 32
    body = f"Hi Taro,\n\nConfirmed.\n\nBest regards,\nCharles\n\n{rule}\nZillum Inc. | zillum.com\n"
    assert split(body) == TextSplit(
        "Hi Taro,\n\nConfirmed.", "", f"Best regards,\nCharles\n\n{rule}\nZillum Inc. | zillum.com"
    )


def test_sign_off_signature() -> None:
    body = "Hi Taro,\n\nPlease find the signed contract attached.\n\nBest regards,\nCharles\n"
    assert split(body) == TextSplit(
        "Hi Taro,\n\nPlease find the signed contract attached.", "", "Best regards,\nCharles"
    )


def test_bare_sign_off_without_comma() -> None:
    body = "Hallo Herr Hashimoto,\n\ndie Ware ist unterwegs.\n\nMit freundlichen Grüßen\nKarl Stein\n"
    assert split(body) == TextSplit(
        "Hallo Herr Hashimoto,\n\ndie Ware ist unterwegs.", "", "Mit freundlichen Grüßen\nKarl Stein"
    )


def test_sent_from_my_iphone() -> None:
    body = "Yes, Friday works.\n\nSent from my iPhone\n"
    assert split(body) == TextSplit("Yes, Friday works.", "", "Sent from my iPhone")


def test_get_outlook_for_ios() -> None:
    body = "Confirmed.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>\n"
    assert split(body) == TextSplit("Confirmed.", "", "Get Outlook for iOS<https://aka.ms/o0ukef>")


def test_japanese_boxed_signature() -> None:
    body = (
        "山田様\n"
        "\n"
        "お見積りを添付いたします。\n"
        "ご確認のほどよろしくお願いいたします。\n"
        "\n"
        "━━━━━━━━━━━━━━━━━━━━\n"
        "株式会社ゾルカー 営業部\n"
        "橋本 太郎\n"
        "TEL: 03-1234-5678\n"
        "Mail: hashimoto@zylker.example\n"
        "━━━━━━━━━━━━━━━━━━━━\n"
    )
    assert split(body) == TextSplit(
        "山田様\n\nお見積りを添付いたします。\nご確認のほどよろしくお願いいたします。",
        "",
        "━━━━━━━━━━━━━━━━━━━━\n株式会社ゾルカー 営業部\n橋本 太郎\nTEL: 03-1234-5678\n"
        "Mail: hashimoto@zylker.example\n━━━━━━━━━━━━━━━━━━━━",
    )


@pytest.mark.parametrize("rule", ["********************", "＝＝＝＝＝＝＝＝＝＝", "-" * 40, "〜〜〜〜〜〜〜〜"])
def test_japanese_signature_rules(rule: str) -> None:
    body = f"よろしくお願いいたします。\n\n{rule}\n株式会社ゾルカー\n橋本 太郎\n"
    assert split(body) == TextSplit("よろしくお願いいたします。", "", f"{rule}\n株式会社ゾルカー\n橋本 太郎")


def test_signature_and_quote_together() -> None:
    body = (
        "承知しました。\n"
        "\n"
        "--------------------\n"
        "株式会社ゾルカー\n"
        "橋本 太郎\n"
        "--------------------\n"
        "\n"
        "2026年11月30日(月) 10:00 山田 太郎 <yamada@customer.example>:\n"
        "> 納期を教えてください。\n"
    )
    assert split(body) == TextSplit(
        "承知しました。",
        "2026年11月30日(月) 10:00 山田 太郎 <yamada@customer.example>:",
        "--------------------\n株式会社ゾルカー\n橋本 太郎\n--------------------",
    )


# What is no quote or signature -------------------------------------------------------


def test_message_without_quote_is_unchanged() -> None:
    body = "\n\nHi Taro,\n\n  Please find the quotation attached.\nThe price is valid until December.\n\n"
    assert split(body) == TextSplit(
        "Hi Taro,\n\n  Please find the quotation attached.\nThe price is valid until December."
    )


def test_empty_text() -> None:
    assert split("") == TextSplit("")
    assert split("\n \n") == TextSplit("")


def test_thanks_sentence_is_no_signature() -> None:
    # The library takes "Thanks, that works ..." and all below it as the signature.
    body = "Hi Taro,\n\nThanks, that works for me.\nSee you on Friday.\n"
    assert split(body) == TextSplit("Hi Taro,\n\nThanks, that works for me.\nSee you on Friday.")


def test_thanks_sentence_then_the_real_sign_off() -> None:
    body = (
        "Hi Taro,\n"
        "\n"
        "Thanks, that works for me. I will send the purchase order tomorrow.\n"
        "Please confirm the delivery address.\n"
        "\n"
        "Best regards,\n"
        "Charles\n"
    )
    assert split(body) == TextSplit(
        "Hi Taro,\n\nThanks, that works for me. I will send the purchase order tomorrow.\n"
        "Please confirm the delivery address.",
        "",
        "Best regards,\nCharles",
    )


def test_sign_off_with_a_long_text_below_is_no_signature() -> None:
    body = "Hi Taro,\n\nThanks,\n" + "\n".join(f"line {n} of the minutes" for n in range(1, 14))
    assert split(body) == TextSplit(body)


def test_hyphen_list_is_no_signature() -> None:
    body = (
        "Hi Taro,\n"
        "\n"
        "We need:\n"
        "  - 10 units of A-100\n"
        "  - 5 units of B-200\n"
        "-Delivery to Osaka\n"
        "\n"
        "Best regards,\n"
        "Charles\n"
    )
    assert split(body) == TextSplit(
        "Hi Taro,\n\nWe need:\n  - 10 units of A-100\n  - 5 units of B-200\n-Delivery to Osaka",
        "",
        "Best regards,\nCharles",
    )


def test_sent_from_my_iphone_in_the_first_line_too() -> None:
    # EmailReply.body would remove both with str.replace.
    body = "Sent from my iPhone, the attachment does not open.\nCould you send it as PDF?\n\nSent from my iPhone\n"
    assert split(body) == TextSplit(
        "Sent from my iPhone, the attachment does not open.\nCould you send it as PDF?", "", "Sent from my iPhone"
    )


# Bounds -----------------------------------------------------------------------------


def test_two_megabyte_body() -> None:
    quoted = "> 2026-11-30 10:00:00 INFO order 1180 shipped to warehouse Osaka\n" * 32000
    body = f"Hi,\n\nSee the log below.\n\n{GMAIL_HEADER}\n{quoted}"
    assert len(body) > 2_000_000
    started = time.perf_counter()
    result = split(body)
    assert time.perf_counter() - started < 1.0
    assert result == TextSplit("Hi,\n\nSee the log below.", GMAIL_HEADER)


def test_two_megabyte_body_without_split_point() -> None:
    body = "Please find the quotation attached.\n" * 60000 + "\n-- \nCharles\n"
    started = time.perf_counter()
    result = split(body)
    assert time.perf_counter() - started < 1.0
    # The delimiter lies beyond SCAN_MAX: the text is kept whole.
    assert result == TextSplit(body.strip())


def test_quote_beyond_the_scan_is_not_looked_for() -> None:
    body = "x\n" * (SCAN_MAX // 2 + 10) + f"{GMAIL_HEADER}\n> old\n"
    assert split(body) == TextSplit(body.strip())


def test_long_lines_starting_like_headers_stay_fast() -> None:
    # The library's "Am ... schrieb ...:" pattern takes seconds on 64 KB of such lines.
    body = "Hallo,\n" + ("Am x schrieb " * 20 + "\n") * 400
    started = time.perf_counter()
    result = split(body)
    assert time.perf_counter() - started < 0.5
    assert result == TextSplit(body.strip())


def test_plain_text_does_not_reach_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = newtext._message

    def counting(lines: list[str]):  # type: ignore[no-untyped-def]
        calls.append(len(lines))
        return real(lines)

    monkeypatch.setattr(newtext, "_message", counting)
    plain = "Please find the quotation attached.\n" * 28
    assert split(plain) == TextSplit(plain.strip())
    assert calls == []
    assert split(f"Yes.\n\n{GMAIL_HEADER}\n> {plain}") == TextSplit("Yes.", GMAIL_HEADER)
    assert calls


def test_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(lines: list[str]):  # type: ignore[no-untyped-def]
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(newtext, "_message", broken)
    body = f"  Yes.\n\n{GMAIL_HEADER}\n> old\n"
    assert split(body) == TextSplit(body.strip())


def test_bottom_posted_reply_keeps_the_answer_below_the_quote() -> None:
    text = ("On Mon, Nov 30, 2026 at 10:00 AM Taro Hashimoto <hashimoto@zylker.example> wrote:\n"
            "> Here is the quote.\n> Taro\n\nThanks, looks good.\n\n-- \nCharles\nZillum\n")
    assert split(text) == TextSplit(
        "Thanks, looks good.",
        "On Mon, Nov 30, 2026 at 10:00 AM Taro Hashimoto <hashimoto@zylker.example> wrote:",
        "-- \nCharles\nZillum")


def test_a_quote_alone_has_no_new_text() -> None:
    text = "On Mon, Nov 30, 2026 at 10:00 AM Taro <t@zylker.example> wrote:\n> Here is the quote.\n"
    assert split(text) == TextSplit("", "On Mon, Nov 30, 2026 at 10:00 AM Taro <t@zylker.example> wrote:")
