//! Text and statistics primitives of the LLM unlearning metrics (TOFU, MUSE), each defined to
//! give the same numbers as the Python library those benchmarks call.
//!
//! - ROUGE: [`rouge_tokenize`] is `rouge_score`'s default tokenizer (lowercase, every run of
//!   characters outside `[a-z0-9]` becomes a separator, optional Porter stemming of tokens
//!   longer than three characters); [`porter_stem`] is NLTK's `PorterStemmer` in its default
//!   `NLTK_EXTENSIONS` mode, the one `rouge_score` builds; [`rouge_l`] and [`rouge_n`] are
//!   `RougeScorer(["rougeL"])` and `RougeScorer(["rougeN"])` scores.
//! - [`ks_2samp`]: `scipy.stats.ks_2samp(a, b)` with its defaults (two-sided, `method="auto"`):
//!   the exact null distribution when both samples have at most 10,000 values (falling back, as
//!   scipy does, to the asymptotic branch when the exact computation rounds outside `[0, 1]`),
//!   and otherwise the one-sample Kolmogorov distribution at the effective size
//!   ([`kstwo_sf`], `scipy.stats.kstwo.sf`), which uses [`smirnov_sf`]
//!   (`scipy.special.smirnov`) in part of its range.
//! - [`hmean`]: `scipy.stats.hmean`; [`roc_auc`]: `sklearn.metrics.roc_auc_score` for binary
//!   labels, ties counted one half.

use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;

// =============================================================================================
// Porter stemmer (NLTK's extended variant)

/// Stems one word as NLTK's `PorterStemmer().stem(word)` does (mode `NLTK_EXTENSIONS`, the
/// default and the one `rouge_score` constructs): the word is lowercased, a few irregular forms
/// map through a fixed table (`skies` -> `sky`, `dying` -> `die`, `news`, `proceed`...), words of
/// at most two characters are returned lowercased, and every other word goes through Porter's
/// steps 1a to 5b with NLTK's amendments (`ies`/`ied` on four-letter words, `y` -> `i` only after
/// a consonant that is not the first letter, `alli` handled first, `fulli` and `logi`, the
/// two-letter `*o` condition).
///
/// Vowels are `a e i o u` (and `y` after a consonant); every other character, digits and
/// non-ASCII letters included, counts as a consonant, as in NLTK. The result is identical to
/// NLTK's for ASCII input (the only input [`rouge_tokenize`] passes); for other text the
/// lowercasing is Rust's Unicode mapping, which agrees with Python's in all but exotic cases.
pub fn porter_stem(word: &str) -> String {
    porter::stem(word)
}

mod porter {
    /// Irregular forms NLTK's extended mode maps directly (checked after lowercasing).
    const IRREGULAR: &[(&str, &str)] = &[
        ("sky", "sky"),
        ("skies", "sky"),
        ("dying", "die"),
        ("lying", "lie"),
        ("tying", "tie"),
        ("news", "news"),
        ("innings", "inning"),
        ("inning", "inning"),
        ("outings", "outing"),
        ("outing", "outing"),
        ("cannings", "canning"),
        ("canning", "canning"),
        ("howe", "howe"),
        ("proceed", "proceed"),
        ("exceed", "exceed"),
        ("succeed", "succeed"),
    ];

    type Word = Vec<char>;

    pub(super) fn stem(word: &str) -> String {
        let lower = word.to_lowercase();
        if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == lower) {
            return (*s).to_string();
        }
        if word.chars().count() <= 2 {
            return lower;
        }
        let mut w: Word = lower.chars().collect();
        w = step1a(w);
        w = step1b(w);
        w = step1c(w);
        w = step2(w);
        w = step3(w);
        w = step4(w);
        w = step5a(w);
        w = step5b(w);
        w.into_iter().collect()
    }

    /// Consonant flags of every position: `y` is a consonant at the start of a word and after a
    /// vowel, a vowel after a consonant.
    fn consonant_flags(w: &[char]) -> Vec<bool> {
        let mut flags: Vec<bool> = Vec::with_capacity(w.len());
        for (i, &c) in w.iter().enumerate() {
            let cons = match c {
                'a' | 'e' | 'i' | 'o' | 'u' => false,
                'y' => i == 0 || !flags[i - 1],
                _ => true,
            };
            flags.push(cons);
        }
        flags
    }

    fn is_consonant(w: &[char], i: usize) -> bool {
        consonant_flags(&w[..=i])[i]
    }

    /// Porter's measure m: the number of vowel-to-consonant transitions.
    fn measure(w: &[char]) -> usize {
        let f = consonant_flags(w);
        f.windows(2).filter(|p| !p[0] && p[1]).count()
    }

    fn contains_vowel(w: &[char]) -> bool {
        consonant_flags(w).iter().any(|&c| !c)
    }

    fn ends_double_consonant(w: &[char]) -> bool {
        let n = w.len();
        n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
    }

    /// Condition `*o` (consonant-vowel-consonant, the last not `w`, `x` or `y`), plus NLTK's
    /// two-letter vowel-consonant case.
    fn ends_cvc(w: &[char]) -> bool {
        let n = w.len();
        if n >= 3 {
            let f = consonant_flags(w);
            if f[n - 3] && !f[n - 2] && f[n - 1] && !matches!(w[n - 1], 'w' | 'x' | 'y') {
                return true;
            }
        }
        n == 2 && !is_consonant(w, 0) && is_consonant(w, 1)
    }

    fn ends(w: &[char], suffix: &str) -> bool {
        let k = suffix.chars().count();
        w.len() >= k && w[w.len() - k..].iter().copied().eq(suffix.chars())
    }

    /// `w` without its last `k` characters.
    fn cut(w: &[char], k: usize) -> Word {
        w[..w.len() - k].to_vec()
    }

    fn join(mut stem: Word, tail: &str) -> Word {
        stem.extend(tail.chars());
        stem
    }

    fn m_pos(s: &[char]) -> bool {
        measure(s) > 0
    }

    fn m_gt1(s: &[char]) -> bool {
        measure(s) > 1
    }

    /// Applies the first rule whose suffix ends the word: its replacement if the condition holds
    /// on the stem (the word without the suffix), else the word unchanged; no later rule is tried.
    fn first_rule(w: Word, rules: &[(&str, &str)], cond: &dyn Fn(&[char]) -> bool) -> Word {
        for (suffix, replacement) in rules {
            if ends(&w, suffix) {
                let stem = cut(&w, suffix.len());
                return if cond(&stem) {
                    join(stem, replacement)
                } else {
                    w
                };
            }
        }
        w
    }

    fn step1a(w: Word) -> Word {
        if w.len() == 4 && ends(&w, "ies") {
            return join(cut(&w, 3), "ie");
        }
        first_rule(
            w,
            &[("sses", "ss"), ("ies", "i"), ("ss", "ss"), ("s", "")],
            &|_| true,
        )
    }

    fn step1b(w: Word) -> Word {
        if ends(&w, "ied") {
            let tail = if w.len() == 4 { "ie" } else { "i" };
            return join(cut(&w, 3), tail);
        }
        if ends(&w, "eed") {
            let stem = cut(&w, 3);
            return if m_pos(&stem) { join(stem, "ee") } else { w };
        }
        let mut inter = None;
        for suffix in ["ed", "ing"] {
            if ends(&w, suffix) {
                let s = cut(&w, suffix.len());
                if contains_vowel(&s) {
                    inter = Some(s);
                    break;
                }
            }
        }
        let Some(s) = inter else {
            return w;
        };
        for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
            if ends(&s, suffix) {
                return join(cut(&s, 2), replacement);
            }
        }
        if ends_double_consonant(&s) {
            let last = s[s.len() - 1];
            return if matches!(last, 'l' | 's' | 'z') {
                s
            } else {
                cut(&s, 1)
            };
        }
        if measure(&s) == 1 && ends_cvc(&s) {
            join(s, "e")
        } else {
            s
        }
    }

    fn step1c(w: Word) -> Word {
        if ends(&w, "y") {
            let stem = cut(&w, 1);
            if stem.len() > 1 && is_consonant(&stem, stem.len() - 1) {
                return join(stem, "i");
            }
        }
        w
    }

    fn step2(w: Word) -> Word {
        if ends(&w, "alli") {
            let stem = cut(&w, 4);
            if m_pos(&stem) {
                return step2(join(stem, "al"));
            }
        }
        const RULES: &[(&str, &str)] = &[
            ("ational", "ate"),
            ("tional", "tion"),
            ("enci", "ence"),
            ("anci", "ance"),
            ("izer", "ize"),
            ("bli", "ble"),
            ("alli", "al"),
            ("entli", "ent"),
            ("eli", "e"),
            ("ousli", "ous"),
            ("ization", "ize"),
            ("ation", "ate"),
            ("ator", "ate"),
            ("alism", "al"),
            ("iveness", "ive"),
            ("fulness", "ful"),
            ("ousness", "ous"),
            ("aliti", "al"),
            ("iviti", "ive"),
            ("biliti", "ble"),
            ("fulli", "ful"),
        ];
        if RULES.iter().any(|(s, _)| ends(&w, s)) {
            return first_rule(w, RULES, &m_pos);
        }
        // `logi` -> `log`, with the measure taken on the stem plus its `l`.
        if ends(&w, "logi") && m_pos(&w[..w.len() - 3]) {
            return join(cut(&w, 4), "log");
        }
        w
    }

    fn step3(w: Word) -> Word {
        first_rule(
            w,
            &[
                ("icate", "ic"),
                ("ative", ""),
                ("alize", "al"),
                ("iciti", "ic"),
                ("ical", "ic"),
                ("ful", ""),
                ("ness", ""),
            ],
            &m_pos,
        )
    }

    fn step4(w: Word) -> Word {
        const BEFORE_ION: &[&str] = &[
            "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
        ];
        const AFTER_ION: &[&str] = &["ou", "ism", "ate", "iti", "ous", "ive", "ize"];
        let strip = |w: Word, k: usize| {
            let stem = cut(&w, k);
            if m_gt1(&stem) {
                stem
            } else {
                w
            }
        };
        if let Some(s) = BEFORE_ION.iter().find(|s| ends(&w, s)) {
            return strip(w, s.len());
        }
        if ends(&w, "ion") {
            let stem = cut(&w, 3);
            let st = matches!(stem.last(), Some('s' | 't'));
            return if m_gt1(&stem) && st { stem } else { w };
        }
        if let Some(s) = AFTER_ION.iter().find(|s| ends(&w, s)) {
            return strip(w, s.len());
        }
        w
    }

    fn step5a(w: Word) -> Word {
        if ends(&w, "e") {
            let stem = cut(&w, 1);
            let m = measure(&stem);
            if m > 1 || (m == 1 && !ends_cvc(&stem)) {
                return stem;
            }
        }
        w
    }

    fn step5b(w: Word) -> Word {
        if ends(&w, "ll") && m_gt1(&w[..w.len() - 1]) {
            return cut(&w, 1);
        }
        w
    }
}

// =============================================================================================
// ROUGE

/// Tokenizes `text` as `rouge_score`'s default tokenizer
/// (`rouge_score.tokenizers.DefaultTokenizer(use_stemmer=stem).tokenize(text)`): the text is
/// lowercased (Unicode lowercasing, so `İ` and the Kelvin sign yield ASCII letters, the only two
/// non-ASCII characters that do, in Python as in Rust), every run of characters other than ASCII
/// `a`-`z` and `0`-`9` separates tokens, and with `stem`, tokens longer than three characters
/// are replaced by their [`porter_stem`]. Empty tokens are dropped.
pub fn rouge_tokenize(text: &str, stem: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    for raw in lower.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
        if raw.is_empty() {
            continue;
        }
        let tok = if stem && raw.len() > 3 {
            porter::stem(raw)
        } else {
            raw.to_string()
        };
        let valid = !tok.is_empty()
            && tok
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            out.push(tok);
        }
    }
    out
}

/// Precision, recall and F-measure of one ROUGE comparison, as `rouge_score.scoring.Score`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RougeScore {
    /// Matches over the prediction's length (tokens or n-grams).
    pub precision: f64,
    /// Matches over the reference's length.
    pub recall: f64,
    /// Harmonic mean `2PR / (P + R)`, 0 when both are 0.
    pub fmeasure: f64,
}

impl RougeScore {
    fn from_pr(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        RougeScore {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// Length of a longest common subsequence of `a` and `b`.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of already tokenized texts: the longest common subsequence over the prediction's
/// length (precision) and the reference's (recall); all zeros when either is empty.
pub fn rouge_l_tokens<S: AsRef<str>>(reference: &[S], prediction: &[S]) -> RougeScore {
    if reference.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let r: Vec<&str> = reference.iter().map(AsRef::as_ref).collect();
    let p: Vec<&str> = prediction.iter().map(AsRef::as_ref).collect();
    let lcs = lcs_len(&r, &p) as f64;
    RougeScore::from_pr(lcs / p.len() as f64, lcs / r.len() as f64)
}

/// ROUGE-L between a reference and a prediction, as
/// `RougeScorer(["rougeL"], use_stemmer=stem).score(target=reference, prediction=prediction)`.
pub fn rouge_l(reference: &str, prediction: &str, stem: bool) -> RougeScore {
    rouge_l_tokens(
        &rouge_tokenize(reference, stem),
        &rouge_tokenize(prediction, stem),
    )
}

/// ROUGE-N of already tokenized texts: clipped n-gram matches over the prediction's n-gram count
/// (precision) and the reference's (recall), each count taken as at least 1. Errors when `n` is 0.
pub fn rouge_n_tokens<S: AsRef<str>>(
    reference: &[S],
    prediction: &[S],
    n: usize,
) -> Result<RougeScore> {
    if n == 0 {
        return Err(Error::invalid("rouge_n: n must be positive"));
    }
    fn counts<S: AsRef<str>>(t: &[S], n: usize) -> HashMap<Vec<&str>, usize> {
        let mut m = HashMap::new();
        if t.len() >= n {
            for w in t.windows(n) {
                let key: Vec<&str> = w.iter().map(AsRef::as_ref).collect();
                *m.entry(key).or_insert(0) += 1;
            }
        }
        m
    }
    let r = counts(reference, n);
    let p = counts(prediction, n);
    let overlap: usize = r
        .iter()
        .map(|(k, &c)| c.min(p.get(k).copied().unwrap_or(0)))
        .sum();
    let r_total: usize = r.values().sum();
    let p_total: usize = p.values().sum();
    Ok(RougeScore::from_pr(
        overlap as f64 / p_total.max(1) as f64,
        overlap as f64 / r_total.max(1) as f64,
    ))
}

/// ROUGE-N between a reference and a prediction, as
/// `RougeScorer([f"rouge{n}"], use_stemmer=stem).score(target=reference, prediction=prediction)`.
/// Errors when `n` is 0.
pub fn rouge_n(reference: &str, prediction: &str, n: usize, stem: bool) -> Result<RougeScore> {
    rouge_n_tokens(
        &rouge_tokenize(reference, stem),
        &rouge_tokenize(prediction, stem),
        n,
    )
}

/// ROUGE-1 (unigram overlap), [`rouge_n`] with `n = 1`.
pub fn rouge1(reference: &str, prediction: &str, stem: bool) -> RougeScore {
    rouge_n_tokens(
        &rouge_tokenize(reference, stem),
        &rouge_tokenize(prediction, stem),
        1,
    )
    .expect("n = 1 is valid")
}

// =============================================================================================
// Two-sample Kolmogorov-Smirnov test

/// Statistic and p-value of a two-sample Kolmogorov-Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// The largest absolute difference between the two empirical distribution functions.
    pub statistic: f64,
    /// The two-sided p-value.
    pub pvalue: f64,
}

/// Largest sample size for which `method="auto"` tries the exact distribution.
const KS_MAX_EXACT_N: usize = 10_000;

/// Two-sample Kolmogorov-Smirnov test, as `scipy.stats.ks_2samp(a, b)` with its defaults
/// (`alternative="two-sided"`, `method="auto"`).
///
/// The statistic is the largest gap between the empirical distribution functions (ties are
/// handled by evaluating both functions after every distinct value). When both samples have at
/// most 10,000 values, the p-value is exact: the statistic is rounded to the lattice
/// `h / lcm(n1, n2)` (and reported so), and the probability of a gap of at least that size is
/// the lattice-path count of Hodges (equal sizes: the alternating closed form; unequal sizes:
/// the recursion on the proportion of boundary-crossing paths). If that computation rounds to a
/// value outside `[0, 1]`, or a sample is larger, the p-value is [`kstwo_sf`] at the effective
/// size `round(n1 n2 / (n1 + n2))`, exactly like scipy.
///
/// Infinite values are allowed; errors when either sample is empty or contains NaN.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> Result<KsResult> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::invalid("ks_2samp: both samples must be non-empty"));
    }
    if a.iter().chain(b).any(|x| x.is_nan()) {
        return Err(Error::invalid("ks_2samp: samples contain NaN"));
    }
    let sorted = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|x, y| x.partial_cmp(y).unwrap_or(Ordering::Equal));
        s
    };
    let (x, y) = (sorted(a), sorted(b));
    let (n1, n2) = (x.len(), y.len());
    // Both empirical CDFs after each distinct value, as the differences scipy forms.
    let (mut i, mut j) = (0usize, 0usize);
    let (mut max_diff, mut min_diff) = (f64::NEG_INFINITY, f64::INFINITY);
    while i < n1 || j < n2 {
        let v = match (x.get(i), y.get(j)) {
            (Some(&p), Some(&q)) => p.min(q),
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => unreachable!(),
        };
        while i < n1 && x[i] <= v {
            i += 1;
        }
        while j < n2 && y[j] <= v {
            j += 1;
        }
        let diff = i as f64 / n1 as f64 - j as f64 / n2 as f64;
        max_diff = max_diff.max(diff);
        min_diff = min_diff.min(diff);
    }
    let min_s = (-min_diff).clamp(0.0, 1.0);
    let mut d = if min_s > max_diff { min_s } else { max_diff };

    let g = gcd(n1 as u64, n2 as u64);
    let mut pvalue = None;
    if n1.max(n2) <= KS_MAX_EXACT_N {
        let lcm = (n1 as u64 / g) * n2 as u64;
        let h = (d * lcm as f64).round_ties_even() as u64;
        d = h as f64 / lcm as f64;
        let p = if h == 0 {
            1.0
        } else if n1 == n2 {
            prob_outside_square(n1 as u64, h)
        } else {
            prob_outside_band(n1 as u64, n2 as u64, g, h)
        };
        if (0.0..=1.0).contains(&p) {
            pvalue = Some(p);
        }
    }
    let p = pvalue.unwrap_or_else(|| {
        let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
        let en = m * n / (m + n);
        kstwo_sf(en.round_ties_even() as u64, d)
    });
    Ok(KsResult {
        statistic: d,
        pvalue: p.clamp(0.0, 1.0),
    })
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// P(D >= h/n) for two samples of size `n`: twice the alternating sum of
/// `binom(2n, n - k h) / binom(2n, n)` over k >= 1, evaluated innermost-first as nested
/// products `A1 (1 - A2 (1 - A3 (...)))`, each ratio `A_k` built from its h factors.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut acc = 0.0f64;
    for k in (0..=n / h).rev() {
        let mut ratio = 1.0f64;
        for j in 0..h {
            ratio = (n - k * h - j) as f64 * ratio / (n + k * h + j + 1) as f64;
        }
        acc = ratio * (1.0 - acc);
    }
    2.0 * acc
}

/// P(D >= h/lcm) for samples of sizes `m` and `n` with gcd `g`: the proportion of monotone
/// lattice paths from (0,0) to (m,n) that touch the boundary `|n x - m y| / g >= h`. Each
/// column keeps, for the points strictly inside the band, the proportion of paths reaching the
/// point that have already touched the boundary (points outside count 1), and is built from the
/// previous column by `P(i, j) = (i P(i-1, j) + j P(i, j-1)) / (i + j)`.
fn prob_outside_band(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, g, h) = (m as i64, n as i64, g as i64, h as i64);
    let (mg, ng) = (m / g, n / g);
    let ceil_div = |a: i64, b: i64| -((-a).div_euclid(b));
    // Column x = 0: the points inside the band have not touched it.
    let (mut lo, mut hi) = (0i64, ceil_div(h, mg).min(n + 1));
    let mut col = vec![0.0f64; (hi - lo) as usize];
    let mut next = Vec::with_capacity(col.len() + 2);
    for i in 1..=m {
        let new_lo = ((ng * i - h).div_euclid(mg) + 1).max(0).min(n);
        let new_hi = ceil_div(ng * i + h, mg).min(n + 1);
        if new_hi <= new_lo {
            return 1.0;
        }
        next.clear();
        let mut below = if new_lo == 0 { 0.0 } else { 1.0 };
        for j in new_lo..new_hi {
            let left = if j >= lo && j < hi {
                col[(j - lo) as usize]
            } else {
                1.0
            };
            below = (left * i as f64 + below * j as f64) / (i + j) as f64;
            next.push(below);
        }
        std::mem::swap(&mut col, &mut next);
        (lo, hi) = (new_lo, new_hi);
    }
    col[(hi - lo - 1) as usize]
}

// ---------------------------------------------------------------------------------------------
// One-sample Kolmogorov distribution (scipy.stats.kstwo) and the one-sided Smirnov distribution

/// Survival function of the two-sided one-sample Kolmogorov-Smirnov statistic `D_n`,
/// `P(D_n >= d)`, as `scipy.stats.kstwo.sf(d, n)`.
///
/// Follows scipy's choice of method by region (Simard and L'Ecuyer's): 1 for `d <= 1/(2n)`,
/// Ruben and Gambino's closed forms for `d <= 1/n` and `d >= 1 - 1/n`, twice the one-sided
/// [`smirnov_sf`] for `d >= 1/2` or large `n d^2`, Durbin's matrix method where scipy uses an
/// exact method, and the Pelz-Good asymptotic series where scipy does (`n > 140`, small
/// `n d^2`, and `n > 100000` or `n d^1.5 > 1.4`). NaN for `n = 0` or NaN `d`.
pub fn kstwo_sf(n: u64, d: f64) -> f64 {
    if n == 0 || d.is_nan() {
        return f64::NAN;
    }
    let nf = n as f64;
    if d <= 0.5 / nf {
        return 1.0;
    }
    if d >= 1.0 {
        return 0.0;
    }
    let clip = |p: f64| p.clamp(0.0, 1.0);
    let t = nf * d;
    if t <= 1.0 {
        if t <= 0.5 {
            return 1.0;
        }
        // n!/n^n (2t - 1)^n
        let prob = if n <= 140 {
            let (inv_n, base) = (1.0 / nf, 2.0 * t - 1.0);
            (1..=n).fold(1.0, |acc, i| acc * (i as f64 * inv_n * base))
        } else {
            (ln_nfact_over_npown(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return clip(1.0 - prob);
    }
    if t >= nf - 1.0 {
        return clip(2.0 * (1.0 - d).powf(nf));
    }
    if d >= 0.5 {
        return clip(2.0 * smirnov_sf(n, d));
    }
    let nd2 = t * d;
    if n <= 140 {
        if nd2 <= 4.0 {
            return clip(1.0 - durbin_cdf(n, d));
        }
        return clip(2.0 * smirnov_sf(n, d));
    }
    if nd2 >= 370.0 {
        return 0.0;
    }
    if nd2 >= 2.2 {
        return clip(2.0 * smirnov_sf(n, d));
    }
    let cdf = if n <= 100_000 && nf * d.powf(1.5) <= 1.4 {
        durbin_cdf(n, d)
    } else {
        pelz_good_cdf(n, d)
    };
    clip(1.0 - cdf)
}

/// The correction terms of Stirling's series, `ln(k!) - (k ln k - k + ln(2 pi k)/2)`, for
/// `k >= 1`: exact (from the product) below 20, the asymptotic series beyond.
fn stirling_correction(k: f64) -> f64 {
    if k < 20.0 {
        let fact = (1..=k as u64).fold(1.0f64, |acc, i| acc * i as f64);
        return fact.ln() - (k * k.ln() - k + 0.5 * (2.0 * std::f64::consts::PI * k).ln());
    }
    // B_{2j} / (2j (2j - 1)) for j = 1..8.
    const C: [f64; 8] = [
        1.0 / 12.0,
        -1.0 / 360.0,
        1.0 / 1260.0,
        -1.0 / 1680.0,
        1.0 / 1188.0,
        -691.0 / 360360.0,
        1.0 / 156.0,
        -3617.0 / 122400.0,
    ];
    let r2 = 1.0 / (k * k);
    C.iter().rev().fold(0.0, |acc, &c| acc * r2 + c) / k
}

/// `ln(n! / n^n)` by Stirling's series (the `n ln n` term cancelled analytically).
fn ln_nfact_over_npown(n: f64) -> f64 {
    0.5 * n.ln() - n + 0.5 * (2.0 * std::f64::consts::PI).ln() + stirling_correction(n)
}

/// `x * 2^e` without intermediate overflow.
fn ldexp(mut x: f64, mut e: i64) -> f64 {
    while e > 1000 {
        x *= 2f64.powi(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= 2f64.powi(-1000);
        e += 1000;
    }
    x * 2f64.powi(e as i32)
}

/// Exact `P(D_n <= d)` by Durbin's matrix method (as arranged by Marsaglia, Tsang and Wang):
/// with `d = (k - h)/n`, the `(k, k)` entry of `H^n` times `n!/n^n`, where `H` is the
/// `(2k-1) x (2k-1)` matrix of inverse factorials with corrected first column and last row.
/// Powers are taken by squaring with the scale kept apart as a power of two.
fn durbin_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    // inv_fact[j] = 1/j!
    let mut inv_fact = vec![1.0f64; m + 1];
    for j in 1..=m {
        inv_fact[j] = inv_fact[j - 1] / j as f64;
    }
    let mut hm = vec![0.0f64; m * m];
    for r in 0..m {
        for c in 1..m {
            if r + 1 >= c {
                hm[r * m + c] = inv_fact[r + 1 - c];
            }
        }
    }
    // First column: (1 - h^(j+1)) / (j+1)!, its last entry corrected; last row: its reverse.
    let mut v: Vec<f64> = (0..m)
        .map(|j| (1.0 - h.powi(j as i32 + 1)) * inv_fact[j + 1])
        .collect();
    let corr = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + corr) * inv_fact[m];
    for r in 0..m {
        hm[r * m] = v[r];
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }

    let matmul = |a: &[f64], b: &[f64]| {
        let mut out = vec![0.0f64; m * m];
        for r in 0..m {
            for t in 0..m {
                let art = a[r * m + t];
                if art != 0.0 {
                    let (row, brow) = (&mut out[r * m..(r + 1) * m], &b[t * m..(t + 1) * m]);
                    for (o, &bv) in row.iter_mut().zip(brow) {
                        *o += art * bv;
                    }
                }
            }
        }
        out
    };
    // Keeps entries moderate: divides by 2^128 while the largest exceeds 2^128.
    let rescale = |a: &mut [f64], e: &mut i64| {
        let big = 2f64.powi(128);
        loop {
            let mx = a.iter().fold(0.0f64, |acc, x| acc.max(x.abs()));
            if mx <= big || !mx.is_finite() {
                break;
            }
            a.iter_mut().for_each(|x| *x /= big);
            *e += 128;
        }
    };
    let mut power: Vec<f64> = (0..m * m)
        .map(|i| if i / m == i % m { 1.0 } else { 0.0 })
        .collect();
    let (mut power_e, mut base_e) = (0i64, 0i64);
    let mut base = hm;
    let mut nn = n;
    while nn > 0 {
        if nn & 1 == 1 {
            power = matmul(&power, &base);
            power_e += base_e;
            rescale(&mut power, &mut power_e);
        }
        nn >>= 1;
        if nn > 0 {
            base = matmul(&base, &base);
            base_e *= 2;
            rescale(&mut base, &mut base_e);
        }
    }
    let mut p = power[(k - 1) * m + (k - 1)];
    let mut e = power_e;
    // Times n!/n^n, rescaling upwards when the running value gets small.
    let nf = n as f64;
    let tiny = 2f64.powi(-128);
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < tiny && p != 0.0 {
            p *= 2f64.powi(128);
            e -= 128;
        }
    }
    ldexp(p, e).clamp(0.0, 1.0)
}

/// Pelz and Good's asymptotic series for `P(D_n <= d)`: Li-Chien and Korolyuk's expansion
/// `K0(z) + K1(z)/sqrt(n) + K2(z)/n + K3(z)/n^1.5` at `z = d sqrt(n)`, each term transformed
/// with Jacobi's theta identity into sums that converge fast for small `z`.
fn pelz_good_cdf(n: u64, d: f64) -> f64 {
    use std::f64::consts::PI;
    if d <= 0.0 {
        return 0.0;
    }
    if d >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let z = nf.sqrt() * d;
    let (z2, z3, z4, z6) = (z * z, z * z * z, z.powi(4), z.powi(6));
    let qlog = -PI * PI / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    let kmax = (16.0 * z / PI).ceil() as i64;
    // Sums over odd m = 2k - 1 of c(m) exp(-m^2 pi^2 / (8 z^2)), smallest terms first.
    let mut k = [0.0f64; 4];
    for kk in (1..=kmax).rev() {
        let mo = (2 * kk - 1) as f64;
        let (m2, m4, m6) = (mo * mo, mo.powi(4), mo.powi(6));
        let w = (qlog * m2).exp();
        k[0] += w;
        k[1] += (k1a + k1b * m2) * w;
        k[2] += (k2a + k2b * m2 + k2c * m4) * w;
        k[3] += (k3a + k3b * m2 + k3c * m4 + k3d * m6) * w;
    }
    let s2pi = (2.0 * PI).sqrt();
    k[0] *= s2pi / z;
    k[1] *= s2pi / (6.0 * z4);
    k[2] *= s2pi / (72.0 * z.powi(7));
    k[3] *= s2pi / (6480.0 * z.powi(10));
    // The extra sums over all k >= 1 of k^2 exp(-k^2 pi^2 / (2 z^2)) terms.
    let q2log = -pi2 / 2.0 / z2;
    let (mut s2, mut s3) = (0.0f64, 0.0f64);
    for kk in (1..=kmax).rev() {
        let kf = kk as f64;
        let w = (q2log * kf * kf).exp();
        s2 += kf * kf * w;
        s3 += (3.0 * z2 - pi2 * kf * kf) * kf * kf * w;
    }
    k[2] += s2 * pi2 * s2pi / (-36.0 * z3);
    k[3] += s3 * pi2 * s2pi / (216.0 * z6);
    k[0] + k[1] / nf.sqrt() + k[2] / nf + k[3] / (nf * nf.sqrt())
}

/// Survival function of the one-sided one-sample Kolmogorov-Smirnov statistic `D_n^+`,
/// `P(D_n^+ >= d)`, as `scipy.special.smirnov(n, d)`.
///
/// Uses the Birnbaum-Tingey sum `d * sum_{v < n(1-d)} C(n,v) (d + v/n)^(v-1) (1 - d - v/n)^(n-v)`
/// (positive terms, added in log space, with `n d` split exactly into integer and fractional
/// parts so the bases keep full relative precision), the closed forms for `d <= 1/n` and
/// `d >= 1 - 1/n`, 0 where `exp(-2 n d^2)` underflows, and, like scipy,
/// the approximation `exp(-(6nd+1)^2 / 18n)` for `n > 1,000,000`. NaN for `n = 0` or `d` outside
/// `[0, 1]`.
pub fn smirnov_sf(n: u64, d: f64) -> f64 {
    if n == 0 || !(0.0..=1.0).contains(&d) {
        return f64::NAN;
    }
    if n == 1 {
        return 1.0 - d;
    }
    if d == 0.0 {
        return 1.0;
    }
    if d == 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    // n d = floor + alpha, exactly (to double-double precision).
    let hi = nf * d;
    let lo = nf.mul_add(d, -hi);
    let mut fl = hi.floor();
    let mut alpha = (hi - fl) + lo;
    if alpha < 0.0 {
        fl -= 1.0;
        alpha += 1.0;
    }
    if alpha >= 1.0 {
        fl += 1.0;
        alpha = 0.0;
    }
    let nxfl = fl as u64;
    if nxfl == 0 || (nxfl == 1 && alpha == 0.0) {
        // d <= 1/n: P(D+ < d) = d (1 + d)^(n-1)
        let cdf = d * ((nf - 1.0) * d.ln_1p()).exp();
        return 1.0 - cdf;
    }
    // exp() of anything below this is 0 (below the smallest subnormal).
    const MIN_EXPABLE: f64 = -746.0;
    if -2.0 * nf * d * d < MIN_EXPABLE {
        return 0.0;
    }
    if nxfl >= n - 1 {
        return (nf * (-d).ln_1p()).exp();
    }
    if n > 1_000_000 {
        let logp = -(6.0 * nf * d + 1.0).powi(2) / 18.0 / nf;
        return if logp < -std::f64::consts::LN_2 {
            logp.exp()
        } else {
            1.0 - (-logp.exp_m1())
        };
    }
    // ln of each term. With Stirling's formula for the binomial coefficient, the large parts
    // (k ln k for k = n, v, n - v) cancel analytically against the powers, leaving
    //   ln d + v ln(1 + nd/v) - ln((nd + v)/n) + (n - v) ln((n - v - nd)/(n - v))
    //   + ln(n / (2 pi v (n - v)))/2 + S(n) - S(v) - S(n - v)
    // (S the Stirling corrections), all of moderate size. The v = 0 term is (1 - d)^n.
    let nd = fl + alpha;
    let ln_d = d.ln();
    let s_n = stirling_correction(nf);
    let top = n - nxfl - 1;
    let terms: Vec<f64> = (0..=top)
        .map(|v| {
            if v == 0 {
                return nf * (-d).ln_1p();
            }
            let vf = v as f64;
            let rest = (n - v) as f64;
            let down = ((n - v - nxfl) as f64) - alpha; // n - v - n d
            let y = nd / rest;
            let tail = if y < 0.5 {
                rest * (-y).ln_1p()
            } else {
                rest * (down.ln() - rest.ln())
            };
            ln_d + vf * (nd / vf).ln_1p() - ((nd + vf).ln() - nf.ln())
                + tail
                + 0.5 * (nf / (2.0 * std::f64::consts::PI * vf * rest)).ln()
                + s_n
                - stirling_correction(vf)
                - stirling_correction(rest)
        })
        .collect();
    let mx = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if mx == f64::NEG_INFINITY {
        return 0.0;
    }
    let s: f64 = terms.iter().map(|&l| (l - mx).exp()).sum();
    (mx + s.ln()).exp().clamp(0.0, 1.0)
}

// =============================================================================================
// Harmonic mean and ROC AUC

/// Harmonic mean, as `scipy.stats.hmean(xs)`: `n / sum(1/x)`, which is 0 as soon as one value
/// is 0 (and `+inf` values contribute nothing). Errors on an empty slice, NaN or a negative
/// value (where scipy returns NaN with a warning).
pub fn hmean(xs: &[f64]) -> Result<f64> {
    if xs.is_empty() {
        return Err(Error::invalid("hmean: empty input"));
    }
    if xs.iter().any(|x| x.is_nan()) {
        return Err(Error::invalid("hmean: input contains NaN"));
    }
    if xs.iter().any(|&x| x < 0.0) {
        return Err(Error::invalid(
            "hmean: only defined for non-negative values",
        ));
    }
    if xs.contains(&0.0) {
        return Ok(0.0);
    }
    let s: f64 = xs.iter().map(|x| 1.0 / x).sum();
    Ok(1.0 / (s / xs.len() as f64))
}

/// Area under the ROC curve of `scores` for binary `labels` (`true` = positive), as
/// `sklearn.metrics.roc_auc_score(labels, scores)`: the probability that a random positive
/// scores above a random negative, ties counting one half (the Mann-Whitney statistic with
/// average ranks). Computed from exact integer pair counts.
///
/// Errors when the lengths differ, a score is not finite, or only one class is present.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    if scores.len() != labels.len() {
        return Err(Error::invalid(format!(
            "roc_auc: {} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(Error::invalid("roc_auc: scores must be finite"));
    }
    let n_pos = labels.iter().filter(|&&l| l).count() as u128;
    let n_neg = labels.len() as u128 - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::invalid(
            "roc_auc: only one class present in the labels; ROC AUC is not defined",
        ));
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap_or(Ordering::Equal));
    // Twice the number of (positive, negative) pairs ordered correctly, ties counting 1.
    let (mut twice, mut neg_below) = (0u128, 0u128);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        let (mut pos, mut neg) = (0u128, 0u128);
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if labels[idx[j]] {
                pos += 1;
            } else {
                neg += 1;
            }
            j += 1;
        }
        twice += pos * (2 * neg_below + neg);
        neg_below += neg;
        i = j;
    }
    Ok(twice as f64 / (2 * n_pos * n_neg) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_classic_words() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("hopping", "hop"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generously", "gener"),
            ("dying", "die"),
            ("skies", "sky"),
            ("news", "news"),
            ("is", "is"),
        ] {
            assert_eq!(porter_stem(w), s, "{w}");
        }
    }

    #[test]
    fn tokenizer_and_rouge_basics() {
        assert_eq!(
            rouge_tokenize("The quick, BROWN fox's 2nd-jump!", false),
            ["the", "quick", "brown", "fox", "s", "2nd", "jump"]
        );
        assert!(rouge_tokenize("  ,;!  ", true).is_empty());
        let s = rouge_l("a b c d", "a c d e f", false);
        assert_eq!(s.precision, 3.0 / 5.0);
        assert_eq!(s.recall, 3.0 / 4.0);
        assert_eq!(rouge_l("", "a", false), RougeScore::default());
        assert!(rouge_n("a", "a", 0, false).is_err());
    }

    #[test]
    fn ks_small_exact() {
        let r = ks_2samp(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        assert_eq!(r.statistic, 1.0);
        assert!((r.pvalue - 0.1).abs() < 1e-15);
        let r = ks_2samp(&[1.0, 2.0], &[1.0, 2.0]).unwrap();
        assert_eq!((r.statistic, r.pvalue), (0.0, 1.0));
    }
}
