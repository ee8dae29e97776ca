#!/usr/bin/env python3
"""Text-metric reference fixture: the Python libraries TOFU and MUSE compute their metrics with,
on deterministic (seeded) cases, for crates/llm/tests/textmetrics.rs.

- Porter stems: nltk's PorterStemmer() (the NLTK_EXTENSIONS mode rouge_score builds) on ~2,000
  words: the paper's examples, nltk's irregular forms, short words, words with digits, every
  suffix rule on a set of stems, and random letter strings.
- ROUGE: rouge_score's default tokenizer and RougeScorer(["rouge1", "rouge2", "rougeL"]) with and
  without stemming on ~300 sentence pairs (punctuation, casing, numbers, Unicode, empty strings).
- Kolmogorov-Smirnov: scipy.stats.ks_2samp(a, b) on ~200 sample pairs (sizes 1..500, ties,
  strongly separated samples, the exact/asymptotic boundary at 10,000, equal sizes whose exact
  computation falls back to the asymptotic branch), plus scipy.stats.kstwo.sf and
  scipy.special.smirnov on grids that cross every branch of their implementations.
- scipy.stats.hmean and sklearn.metrics.roc_auc_score.

Writes OUT/textmetrics.json (with the library versions).

Usage: scripts/ref/textmetrics_ref.py OUT
"""

import json
import math
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer, tokenizers
from scipy import special, stats
from sklearn.metrics import roc_auc_score

SEED = 20240607

# ---------------------------------------------------------------------------------------------
# Words

PAPER = """caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated
troubled sized hopping tanned falling hissing fizzed failing filing happy sky relational
conditional rational valenci hesitanci digitizer conformabli radicalli differentli vileli
analogousli vietnamization predication operator feudalism decisiveness hopefulness callousness
formaliti sensitiviti sensibiliti triplicate formative formalize electriciti electrical hopeful
goodness revival allowance inference airliner gyroscopic adjustable defensible irritant
replacement adjustment dependent adoption homologou communism activate angulariti homologous
effective bowdlerize probate rate cease controll roll""".split()

IRREGULAR = """sky skies dying lying tying news innings inning outings outing cannings canning howe
proceed exceed succeed proceeding exceeded succeeds proceeds newsy skyward dies lies flies
spies cries died tied lied spied cried fried skied tries tried try spy fly enjoy enjoyment
generously generous generosity generation generalization generalizations""".split()

SHORT = """a i o u y e an be is as at to of it ab aa yy by my ie ok us we he me oh ox ax id
ies ied eed ing ed s ss sss yes the and was are cat dog run sky day say boy eye toy buy""".split()

DIGITS = """abc123 123abc 2nd 3rd 4th 1st 21st covid19 mp3s 1990s b2b h2o x86 100s running2 ing9
2ing ies4 4ies 7eed eed7 99ers 3dness a1b2c3 1234 56789 000 9lives 24hours 5ing 8ed""".split()

COMMON = """the of and to in is was he for it with as his on be at by had are but from or have an
they which one you were her all she there would their we him been has when who will more no if
out so said what up its about into than them can only other new some could time these two may
then do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three states himself few house use during without again place american
around however home small found thought went say part once general high upon school every
don does got united left number course war until always away something fact though water less
public put think almost hand enough far took head yet government system better set told nothing
night end why called didn eyes find going look asked later knew point next program city business
give group toward young days let room president side social given present several order national
possible rather second face per among form important often things looking early white case john
become large big need four within felt along children saw best church ever least power development
light thing seemed family interest want members mind country area others done turned although
open god service certain kind problem began different door thus help sense means whole matter
perhaps itself york times human law line above name example action company hands local show whose
five history gave today either act feet across taken past quite anything seen having death week
experience body word half really field am car words already themselves information tell together
college shall money period held keep sure free real probably seems political cannot behind miss
question air office making brought whether idea run""".split()

STEMS = """relat condit ration valen hesit digit conform radic differ vil analog vietnam predic oper
feud decis hope callous formal sensit sensib tripl form electr good reviv allow infer airlin
gyroscop adjust defens irrit replac depend adopt homolog commun activ angular effect bowdler prob
ceas control generous nation organ real civil hop tan fall hiss fizz fail fil plaster motor sing
bled agr fe troubl conflat siz geo theo archaeo philo bio cheer care help us power mean thought
play class crit log pur wonder beaut sky fly happ rel hopp runn stopp bak mak tak writ read
speak lov liv giv mov improv argu continu creat educ communic gener emot rhythm syzyg
sy toy journ""".split()

SUFFIXES = """s es ies ied ing ed eed er ers ly li y ational tional enci anci izer abli bli alli entli
eli ousli ization ation ations ator alism iveness fulness ousness aliti iviti biliti fulli logi
logy icate ative alize iciti ical ful ness al ance ence ic able ible ant ement ment ent ion sion
tion ou ism ate iti ous ive ize e ll sses ss ally ically fully lessly izations ingly edly nesses
ities ement ments ingness yly yed ying""".split()

CASED = """Running SKIES Generously NEWS Dying Relational HOPEFULNESS Ties""".split()
UNICODE_WORDS = ["café", "naïve", "façade", "résumés", "jalapeños", "über", "straße", "ﬁnding"]


def words(rng):
    out = []
    out += PAPER + IRREGULAR + SHORT + DIGITS + COMMON + CASED + UNICODE_WORDS
    combos = [s + x for s in STEMS for x in [""] + SUFFIXES]
    pick = rng.choice(len(combos), size=1100, replace=False)
    out += [combos[i] for i in sorted(pick)]
    # Random strings, biased towards vowel/consonant/y patterns and Porter suffixes.
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(350):
        n = int(rng.integers(1, 15))
        w = "".join(rng.choice(list("aeiouyyy" if rng.random() < 0.35 else letters), size=n))
        if rng.random() < 0.5:
            w += SUFFIXES[int(rng.integers(len(SUFFIXES)))]
        out.append(w)
    out += ["y" * k for k in range(1, 9)] + ["ay" * k for k in range(1, 5)] + ["yay", "yayy", "ayyyy"]
    seen, uniq = set(), []
    for w in out:
        if w not in seen:
            seen.add(w)
            uniq.append(w)
    return uniq


# ---------------------------------------------------------------------------------------------
# ROUGE

PUNCT = [",", ".", "!", "?", ";", ":", "'s", "'", "\"", "-", "--", "(", ")", "/", "…", "—", "’s"]
SPECIAL = ["İstanbul", "\u212a", "Kelvin\u212aK", "naïve", "café", "日本語", "テキスト", "😀", "ﬁne",
           "ΣΊΣΥΦΟΣ", "Ωmega", "x²", "١٢٣", "３４", "co-operate", "e-mail", "U.S.A.", "3.14",
           "1,000,000", "don't", "we'll", "C++", "#hashtag", "@user", "http://x.org/a_b"]


def sentence(rng, vocab, n):
    toks = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            t = SPECIAL[int(rng.integers(len(SPECIAL)))]
        elif r < 0.12:
            t = str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
        else:
            t = vocab[int(rng.integers(len(vocab)))]
        c = rng.random()
        if c < 0.1:
            t = t.upper()
        elif c < 0.25:
            t = t.capitalize()
        if rng.random() < 0.15:
            t += PUNCT[int(rng.integers(len(PUNCT)))]
        toks.append(t)
    seps = [" ", " ", " ", "  ", "\t", "\n", " - "]
    s = ""
    for i, t in enumerate(toks):
        s += (seps[int(rng.integers(len(seps)))] if i else "") + t
    return s


def perturb(rng, s, vocab):
    toks = s.split(" ")
    out = []
    for t in toks:
        r = rng.random()
        if r < 0.15:
            continue
        if r < 0.3:
            out.append(vocab[int(rng.integers(len(vocab)))])
        elif r < 0.38:
            out.append(t)
            out.append(vocab[int(rng.integers(len(vocab)))])
        else:
            out.append(t)
    if len(out) > 2 and rng.random() < 0.3:
        i, j = rng.choice(len(out), size=2, replace=False)
        out[i], out[j] = out[j], out[i]
    return " ".join(out)


def rouge_pairs(rng, vocab):
    pairs = [("", ""), ("", "the cat"), ("the cat", ""), ("!!!", "..."), ("   ", "a"),
             ("a", "   "), ("The cat sat.", "The cat sat."), ("the the the", "the"),
             ("running runs ran", "run running"), ("İstanbul \u212aelvin", "istanbul kelvin"),
             ("naïve café", "naive cafe"), ("日本語", "日本語"), ("😀 smile", "smile 😀"),
             ("generously giving", "generous gifts"), ("skies dying lying", "sky die lie"),
             ("3.14 is pi", "pi is 3 14"), ("A B C D E F", "F E D C B A"), ("abc", "abd")]
    while len(pairs) < 300:
        n = int(rng.integers(0, 30))
        ref = sentence(rng, vocab, n)
        r = rng.random()
        if r < 0.6:
            pred = perturb(rng, ref, vocab)
        elif r < 0.9:
            pred = sentence(rng, vocab, int(rng.integers(0, 30)))
        else:
            pred = ref.lower()
        pairs.append((ref, pred))
    return pairs


# ---------------------------------------------------------------------------------------------
# Kolmogorov-Smirnov

def ks_samples(rng):
    cases = []

    def add(a, b, tag):
        cases.append({"tag": tag, "a": [float(x) for x in a], "b": [float(x) for x in b]})

    for n1, n2 in [(1, 1), (1, 2), (2, 1), (1, 500), (500, 1), (2, 2), (3, 3), (3, 7), (499, 500),
                   (500, 500), (500, 499), (250, 500), (97, 101)]:
        add(rng.normal(size=n1), rng.normal(0.3, 1, size=n2), f"sizes-{n1}-{n2}")
    for _ in range(110):
        n1, n2 = int(rng.integers(1, 501)), int(rng.integers(1, 501))
        shift = float(rng.choice([0.0, 0.1, 0.3, 0.8, 2.0]))
        a, b = rng.normal(size=n1), rng.normal(shift, float(rng.choice([1.0, 1.5])), size=n2)
        kind = rng.random()
        if kind < 0.3:
            a, b = np.round(a, 1), np.round(b, 1)
        elif kind < 0.45:
            a, b = np.floor(a * 2), np.floor(b * 2)
        add(a, b, "random")
    for _ in range(20):
        n = int(rng.integers(1, 501))
        add(rng.normal(size=n), rng.normal(float(rng.choice([0.0, 0.5, 1.5])), size=n), "equal")
    for _ in range(10):
        n1, n2 = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        add(rng.integers(0, 4, size=n1), rng.integers(0, 4, size=n2), "discrete")
    add([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "identical")
    add([5.0] * 10, [5.0] * 7, "constant")
    add([0.0] * 4, [1.0] * 9, "constant-separated")
    add([-0.0, 0.0, 1.0], [0.0, -0.0, 2.0], "signed-zeros")
    # Strongly separated samples: tiny p-values.
    for n1, n2, shift in [(400, 400, 1.5), (400, 400, 2.5), (400, 400, 10.0), (300, 450, 1.0),
                          (300, 450, 3.0), (200, 333, 10.0), (150, 160, 2.0), (500, 480, 1.2),
                          (100, 100, 10.0), (37, 400, 4.0), (250, 250, 0.9), (480, 360, 2.0),
                          (64, 128, 2.0), (1, 400, 10.0), (5, 500, 10.0)]:
        add(rng.normal(size=n1), rng.normal(shift, 1, size=n2), f"separated-{n1}-{n2}-{shift}")
    # Equal sizes with block patterns D = h/n (the exact series can round above 1 and scipy then
    # switches to the asymptotic branch).
    for n, h in [(5, 1), (7, 1), (13, 1), (30, 1), (36, 1), (60, 2), (69, 1), (69, 2), (72, 1),
                 (8, 1), (9, 1), (10, 2), (101, 3), (255, 1), (256, 2), (333, 4), (400, 1),
                 (401, 5), (499, 2), (500, 3)]:
        a = [float(2 * h * (i // h) + i % h) for i in range(n)]
        b = [x + h for x in a]
        add(a, b, f"blocks-{n}-{h}")
    # Around the exact/asymptotic boundary (max size 10,000).
    for n1, n2, shift in [(10000, 20, 0.5), (10001, 20, 0.5), (10000, 10000, 0.03),
                          (10001, 10001, 0.03), (10001, 1, 0.0), (12000, 300, 0.2),
                          (12000, 140, 0.1), (10500, 60, 0.3), (10001, 2, 1.0),
                          (10000, 9999, 0.05), (11000, 700, 0.05)]:
        a = rng.normal(size=n1)
        b = rng.normal(shift, 1, size=n2)
        if n1 >= 10000 and n2 >= 10000:
            a, b = np.round(a, 2), np.round(b, 2)
        add(a, b, f"boundary-{n1}-{n2}")
    return cases


def kstwo_grid():
    pts = []
    ns = [1, 2, 3, 4, 5, 7, 10, 20, 50, 100, 139, 140, 141, 150, 300, 1000, 5000, 20000, 100000,
          100001, 250000]
    for n in ns:
        ds = [0.45 / n, 0.5 / n, 0.55 / n, 0.75 / n, 0.99 / n, 1.0 / n, 1.01 / n, 1.5 / n,
              (n - 1) / n, (n - 1.01) / n, 0.4999, 0.5, 0.5001, 0.7, 0.95, 0.999]
        for c in [0.05, 0.3, 0.754693, 0.76, 1.0, 2.0, 2.19, 2.2, 2.21, 3.9, 4.0, 4.1, 10.0, 18.0,
                  100.0, 369.0, 371.0]:
            ds.append(math.sqrt(c / n))
        for c in [1.3, 1.4, 1.41, 1.6]:
            ds.append((c / n) ** (2.0 / 3.0))
        for d in ds:
            if 0.0 < d <= 1.0:
                pts.append((n, d))
    return pts


def smirnov_grid():
    pts = []
    for n in [1, 2, 3, 5, 10, 11, 50, 100, 1000, 10000, 1000000, 1000001, 2000000]:
        for d in [0.0, 0.3 / n, 1.0 / n, 1.5 / n, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9,
                  (n - 1) / n, 1.0 - 0.5 / n, 1.0, math.sqrt(10.0 / n), math.sqrt(300.0 / n),
                  math.sqrt(354.0 / n), math.sqrt(355.0 / n)]:
            if 0.0 <= d <= 1.0:
                pts.append((n, d))
    return pts


# ---------------------------------------------------------------------------------------------

def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    warnings.simplefilter("ignore")

    stemmer = PorterStemmer()
    ws = words(rng)
    stems = [{"word": w, "stem": stemmer.stem(w)} for w in ws]

    vocab = [w for w in ws if w.isascii()]
    tok = {s: tokenizers.DefaultTokenizer(use_stemmer=s) for s in (False, True)}
    scorers = {s: rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=s)
               for s in (False, True)}
    rouge = []
    for ref, pred in rouge_pairs(rng, vocab):
        for s in (False, True):
            sc = scorers[s].score(target=ref, prediction=pred)
            rouge.append({
                "reference": ref, "prediction": pred, "stem": s,
                "ref_tokens": tok[s].tokenize(ref), "pred_tokens": tok[s].tokenize(pred),
                **{k: [v.precision, v.recall, v.fmeasure] for k, v in sc.items()},
            })

    ks = []
    for c in ks_samples(rng):
        r = stats.ks_2samp(np.asarray(c["a"]), np.asarray(c["b"]))
        ks.append({**c, "statistic": float(r.statistic), "pvalue": float(r.pvalue)})
    kstwo = [{"n": n, "d": d, "sf": float(stats.kstwo.sf(d, n))} for n, d in kstwo_grid()]
    smirnov = [{"n": n, "d": d, "sf": float(special.smirnov(n, d))} for n, d in smirnov_grid()]

    hm = []
    for i in range(40):
        n = int(rng.integers(1, 60))
        x = rng.lognormal(0.0, 1.5, size=n)
        if i % 8 == 7:
            x[int(rng.integers(n))] = 0.0
        hm.append({"x": [float(v) for v in x], "hmean": float(stats.hmean(x))})

    auc = []
    for i in range(60):
        n = int(rng.integers(2, 400))
        y = rng.random(n) < float(rng.uniform(0.05, 0.95))
        y[0], y[-1] = True, False
        s = rng.normal(size=n) + float(rng.uniform(0, 2)) * y
        if i % 3 == 1:
            s = np.round(s, 1)
        elif i % 3 == 2:
            s = np.floor(s)
        auc.append({"scores": [float(v) for v in s], "labels": [bool(v) for v in y],
                    "auc": float(roc_auc_score(y, s))})

    doc = {
        "versions": {p: version(p) for p in ("nltk", "rouge_score", "scipy", "scikit-learn", "numpy")},
        "stems": stems, "rouge": rouge, "ks": ks, "kstwo": kstwo, "smirnov": smirnov,
        "hmean": hm, "roc_auc": auc,
    }
    with open(out / "textmetrics.json", "w", encoding="utf-8") as f:
        json.dump(doc, f, allow_nan=False, ensure_ascii=False)


if __name__ == "__main__":
    main()
