"""A small generative grammar of bilingual sentences: Chinese text with its English translation.

Numbers, dates, times and short everyday phrases, so a tiny model can learn real ASR and AST
from a few thousand synthesized utterances.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_ZH_DIGITS = "零一二三四五六七八九"
_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_ORDINALS = {
    1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh",
    8: "eighth", 9: "ninth", 10: "tenth", 11: "eleventh", 12: "twelfth", 13: "thirteenth",
    14: "fourteenth", 15: "fifteenth", 16: "sixteenth", 17: "seventeenth", 18: "eighteenth",
    19: "nineteenth", 20: "twentieth", 30: "thirtieth",
}
_EN_MONTHS = ("january february march april may june july august september october "
              "november december").split()


@dataclass(frozen=True)
class Sentence:
    """One sentence of the grammar: its Chinese text and English translation."""

    kind: str
    zh: str
    en: str


def zh_number(n: int) -> str:
    """Chinese reading of 0 <= n < 100,000,000 (三万零五百二十, 十五, 一百一十)."""
    if not 0 <= n < 100_000_000:
        raise ValueError(f"zh_number supports 0..99,999,999, got {n}")
    if n == 0:
        return "零"
    if n >= 10_000:
        high, low = divmod(n, 10_000)
        text = _zh_below_10k(high, leading=True) + "万"
        if low:
            text += ("零" if low < 1000 else "") + _zh_below_10k(low, leading=False)
        return text
    return _zh_below_10k(n, leading=True)


def _zh_below_10k(n: int, leading: bool) -> str:
    parts, zero_pending = [], False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit, n = divmod(n, value)
        if digit:
            if zero_pending:
                parts.append("零")
            zero_pending = False
            # 十五, not 一十五, at the start of a number
            if not (unit == "十" and digit == 1 and leading and not parts):
                parts.append(_ZH_DIGITS[digit])
            parts.append(unit)
        elif parts:
            zero_pending = True
    return "".join(parts)


def en_number(n: int) -> str:
    """English words for 0 <= n < 100,000,000, without 'and' or hyphens."""
    if not 0 <= n < 100_000_000:
        raise ValueError(f"en_number supports 0..99,999,999, got {n}")
    if n < 20:
        return _EN_ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _EN_TENS[tens] + (" " + _EN_ONES[ones] if ones else "")
    for value, unit in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= value:
            high, low = divmod(n, value)
            return f"{en_number(high)} {unit}" + (f" {en_number(low)}" if low else "")
    raise AssertionError("unreachable")


def en_ordinal(n: int) -> str:
    """English ordinal words for 1..31 (first, twenty second)."""
    if n in _EN_ORDINALS:
        return _EN_ORDINALS[n]
    tens, ones = divmod(n, 10)
    return f"{_EN_TENS[tens]} {_EN_ORDINALS[ones]}"


def _year(rng: random.Random) -> tuple[str, str]:
    year = rng.randint(1980, 2039)
    zh = "".join(_ZH_DIGITS[int(d)] for d in str(year)) + "年"
    high, low = divmod(year, 100)
    if low == 0:
        en = f"{en_number(high)} hundred"
    elif low < 10:
        en = f"{en_number(year)}"
    else:
        en = f"{en_number(high)} {en_number(low)}"
    return zh, en


def _month_day(rng: random.Random) -> tuple[str, str]:
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    return f"{zh_number(month)}月{zh_number(day)}日", f"{_EN_MONTHS[month - 1]} {en_ordinal(day)}"


def _time(rng: random.Random) -> tuple[str, str]:
    hour, minute = rng.randint(1, 12), rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50])
    if minute == 0:
        return f"{zh_number(hour)}点", f"{en_number(hour)} o'clock"
    return f"{zh_number(hour)}点{zh_number(minute)}分", f"{en_number(hour)} {en_number(minute)}"


def _amount(rng: random.Random) -> int:
    return rng.choice([rng.randint(0, 99), rng.randint(100, 9999), rng.randint(10_000, 999_999)])


_THINGS = [  # (zh measure + noun, en singular, en plural)
    ("个苹果", "apple", "apples"), ("本书", "book", "books"), ("张票", "ticket", "tickets"),
    ("辆车", "car", "cars"), ("个学生", "student", "students"), ("杯茶", "cup of tea", "cups of tea"),
    ("台电脑", "computer", "computers"), ("只猫", "cat", "cats"),
]
_PLACES = [("去北京", "go to beijing"), ("去上海", "go to shanghai"), ("去学校", "go to school"),
           ("去公司", "go to the office"), ("去医院", "go to the hospital"),
           ("去机场", "go to the airport"), ("回家", "go home")]
_PHRASES = [
    ("今天天气很好", "the weather is nice today"), ("我想喝水", "i want to drink water"),
    ("请再说一遍", "please say it again"), ("谢谢你的帮助", "thank you for your help"),
    ("我们明天见", "see you tomorrow"), ("这个多少钱", "how much is this"),
    ("我听不懂", "i do not understand"), ("现在几点了", "what time is it now"),
    ("请打开窗户", "please open the window"), ("会议已经开始了", "the meeting has already started"),
    ("我很喜欢音乐", "i really like music"), ("火车晚点了", "the train is late"),
]


def _counted(n: int, thing: tuple[str, str, str]) -> str:
    _, singular, plural = thing
    return f"{en_number(n)} {singular if n == 1 else plural}"


KINDS = ("number", "date", "time", "count", "place", "phrase", "price")
# proper names, rare by design (benchmarks/hotwords.py --set names_test): not among the default
# kinds, so the demo corpus holds none; `--kinds name` draws sentences that do
# `made_up_name`: the same sentences with a made-up name each (`made_up_name`), for teaching a
# model to read a hotword list (task/context=hotwords): a name heard once can only be spelt
# from the list
# `zh_name`: the same sentences with a Mandarin name in Han characters (its English text in
# pinyin), for hotwords in Mandarin: the names' characters are absent from the demo corpus, or
# sound like ones it holds (吴昊 and 孙浩 both end in `hao`, as 好 does)
EXTRA_KINDS = ("name", "made_up_name", "zh_name")
NAMES = ("olivia", "marcus", "priya", "dmitri", "ingrid", "tobias", "yusuf", "camille",
         "rafael", "soren", "anika", "bastian")
ZH_NAMES = {"王芳": "wang fang", "李娜": "li na", "刘洋": "liu yang", "陈静": "chen jing",
            "杨磊": "yang lei", "赵敏": "zhao min", "周杰": "zhou jie", "吴昊": "wu hao",
            "徐丽": "xu li", "孙浩": "sun hao", "林海": "lin hai", "马明": "ma ming"}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "ch")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s")


def made_up_name(rng: random.Random) -> str:
    """A pronounceable name of two or three syllables that is none of NAMES (e.g. `kadoren`)."""
    while True:
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS)
                       for _ in range(rng.randint(2, 3))) + rng.choice(_CODAS)
        if name not in NAMES:
            return name


def _name_sentence(rng: random.Random, kind: str, name: str, en: str | None = None
                   ) -> Sentence:
    """A sentence with `name` (spelt `en` in the English text, where given)."""
    en = name if en is None else en
    template = rng.randrange(3)
    if template == 0:
        zt, et = _time(rng)
        return Sentence(kind, f"我{zt}见{name}", f"i meet {en} at {et}")
    if template == 1:
        n, thing = rng.randint(1, 99), rng.choice(_THINGS)
        return Sentence(kind, f"{name}有{zh_number(n)}{thing[0]}", f"{en} has {_counted(n, thing)}")
    zm, em = _month_day(rng)
    return Sentence(kind, f"{name}{zm}来", f"{en} comes on {em}")


def sample_sentence(rng: random.Random, kinds: tuple[str, ...] = KINDS) -> Sentence:
    """Draw one sentence of a random kind among `kinds`."""
    unknown = set(kinds) - set(KINDS) - set(EXTRA_KINDS)
    if unknown:
        raise ValueError(f"unknown sentence kinds {sorted(unknown)}; choose from "
                         f"{', '.join(KINDS + EXTRA_KINDS)}")
    kind = rng.choice(kinds)
    if kind == "name":
        return _name_sentence(rng, kind, rng.choice(NAMES))
    if kind == "made_up_name":
        return _name_sentence(rng, kind, made_up_name(rng))
    if kind == "zh_name":
        name = rng.choice(sorted(ZH_NAMES))
        return _name_sentence(rng, kind, name, ZH_NAMES[name])
    if kind == "number":
        n = _amount(rng)
        return Sentence(kind, zh_number(n), en_number(n))
    if kind == "date":
        (zy, ey), (zmd, emd) = _year(rng), _month_day(rng)
        if rng.random() < 0.5:
            return Sentence(kind, zy + zmd, f"{emd} {ey}")
        return Sentence(kind, f"会议在{zy}{zmd}", f"the meeting is on {emd} {ey}")
    if kind == "time":
        zt, et = _time(rng)
        zm, em = _month_day(rng)
        return Sentence(kind, f"我们{zm}{zt}见面", f"we meet on {em} at {et}")
    if kind == "count":
        n, thing = rng.randint(1, 99), rng.choice(_THINGS)
        return Sentence(kind, f"我有{zh_number(n)}{thing[0]}", f"i have {_counted(n, thing)}")
    if kind == "place":
        (zp, ep), (zt, et) = rng.choice(_PLACES), _time(rng)
        return Sentence(kind, f"我{zt}{zp}", f"i {ep} at {et}")
    if kind == "price":
        n = rng.randint(1, 9999)
        return Sentence(kind, f"这个一共{zh_number(n)}块钱", f"this costs {en_number(n)} yuan in total")
    zh, en = rng.choice(_PHRASES)
    return Sentence(kind, zh, en)
