//! Zeroth-order fine-tuning measured: a yes/no prompt task, zero-shot accuracy, accuracy after
//! MeZO (or a variant) within a time budget, and peak memory against inference.
//!
//! Two tasks, each with balanced answers `Yes` / `No`; a prediction is the answer of lower NLL:
//! - `category` asks whether a word names a thing of a category (`Is "banana" a fruit?`): each
//!   word is asked once about its own category and once about another. Training and test
//!   questions share no word.
//! - `sentiment` asks whether a short review is positive. Reviews are built from templates and
//!   sentiment words; training and test reviews share no sentiment word.

use crate::llama::{CausalLm, LoraConfig};
use crate::score::{scored_logprobs, QaBatch};
use crate::tofu::QaItem;
use crate::tune::Encoder;
use crate::zo_tune::{zo_tune, ZoLog, ZoTuneConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The two answers.
pub const ANSWERS: [&str; 2] = ["Yes", "No"];

const CATEGORIES: [(&str, &[&str]); 10] = [
    (
        "an animal",
        &[
            "dog", "horse", "tiger", "rabbit", "elephant", "wolf", "camel", "dolphin", "goat",
            "lion", "zebra", "squirrel", "giraffe", "bear", "fox", "monkey", "deer", "sheep",
            "otter", "kangaroo",
        ],
    ),
    (
        "a fruit",
        &[
            "banana",
            "apple",
            "cherry",
            "mango",
            "pear",
            "grape",
            "peach",
            "lemon",
            "plum",
            "apricot",
            "kiwi",
            "papaya",
            "melon",
            "orange",
            "pineapple",
            "fig",
            "lime",
            "coconut",
            "raspberry",
            "strawberry",
        ],
    ),
    (
        "a country",
        &[
            "France",
            "Japan",
            "Brazil",
            "Kenya",
            "Canada",
            "Norway",
            "Egypt",
            "Mexico",
            "India",
            "Spain",
            "Chile",
            "Peru",
            "Italy",
            "Germany",
            "Vietnam",
            "Morocco",
            "Sweden",
            "Greece",
            "Australia",
            "Argentina",
        ],
    ),
    (
        "a color",
        &[
            "red",
            "blue",
            "green",
            "yellow",
            "purple",
            "brown",
            "pink",
            "black",
            "white",
            "gray",
            "violet",
            "crimson",
            "turquoise",
            "beige",
            "magenta",
            "navy",
            "olive",
            "maroon",
            "teal",
            "indigo",
        ],
    ),
    (
        "a musical instrument",
        &[
            "piano",
            "violin",
            "guitar",
            "trumpet",
            "flute",
            "drum",
            "cello",
            "harp",
            "saxophone",
            "clarinet",
            "banjo",
            "accordion",
            "oboe",
            "trombone",
            "ukulele",
            "tuba",
            "harmonica",
            "xylophone",
            "bagpipe",
            "mandolin",
        ],
    ),
    (
        "a vehicle",
        &[
            "car",
            "bus",
            "truck",
            "bicycle",
            "train",
            "airplane",
            "motorcycle",
            "tram",
            "van",
            "tractor",
            "ship",
            "helicopter",
            "scooter",
            "taxi",
            "submarine",
            "canoe",
            "jeep",
            "ambulance",
            "yacht",
            "sled",
        ],
    ),
    (
        "a sport",
        &[
            "football",
            "tennis",
            "golf",
            "rugby",
            "cricket",
            "hockey",
            "baseball",
            "volleyball",
            "boxing",
            "swimming",
            "cycling",
            "skiing",
            "badminton",
            "basketball",
            "fencing",
            "rowing",
            "surfing",
            "wrestling",
            "archery",
            "karate",
        ],
    ),
    (
        "a part of the body",
        &[
            "hand", "knee", "elbow", "shoulder", "ankle", "finger", "nose", "ear", "mouth", "neck",
            "wrist", "heel", "chin", "thumb", "toe", "lung", "heart", "liver", "skull", "spine",
        ],
    ),
    (
        "a profession",
        &[
            "doctor",
            "teacher",
            "lawyer",
            "farmer",
            "pilot",
            "nurse",
            "baker",
            "plumber",
            "engineer",
            "carpenter",
            "dentist",
            "chef",
            "architect",
            "journalist",
            "electrician",
            "firefighter",
            "librarian",
            "mechanic",
            "pharmacist",
            "surgeon",
        ],
    ),
    (
        "a metal",
        &[
            "iron",
            "copper",
            "gold",
            "silver",
            "zinc",
            "tin",
            "lead",
            "nickel",
            "aluminum",
            "platinum",
            "titanium",
            "cobalt",
            "chromium",
            "tungsten",
            "magnesium",
            "mercury",
            "lithium",
            "sodium",
            "uranium",
            "bronze",
        ],
    ),
];

/// The category task: `n_train` training and `n_test` test questions, half of them true, on
/// disjoint words (two questions per word).
pub fn yes_no_task(n_train: usize, n_test: usize, seed: u64) -> Result<(Vec<QaItem>, Vec<QaItem>)> {
    let words: Vec<(usize, &str)> = CATEGORIES
        .iter()
        .enumerate()
        .flat_map(|(c, (_, ws))| ws.iter().map(move |w| (c, *w)))
        .collect();
    if n_train == 0
        || n_test == 0
        || n_train % 2 == 1
        || n_test % 2 == 1
        || n_train + n_test > 2 * words.len()
    {
        return Err(Error::config(
            "yes_no",
            format!(
                "even, non-empty sets of at most {} questions in all",
                2 * words.len()
            ),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order = words.clone();
    order.shuffle(&mut rng);
    let mut items = Vec::with_capacity(2 * order.len());
    for (c, w) in order {
        let mut other = rng.gen_range(0..CATEGORIES.len() - 1);
        if other >= c {
            other += 1;
        }
        for (cat, yes) in [(c, true), (other, false)] {
            items.push(QaItem {
                question: format!("Is \"{w}\" {}? Answer Yes or No.", CATEGORIES[cat].0),
                answer: ANSWERS[usize::from(!yes)].to_string(),
                paraphrased_question: String::new(),
                paraphrased_answer: String::new(),
                perturbed_answer: vec![ANSWERS[usize::from(yes)].to_string()],
            });
        }
    }
    let test = items[..n_test].to_vec();
    let mut train = items[n_test..n_test + n_train].to_vec();
    train.shuffle(&mut rng);
    Ok((train, test))
}

/// A batch of questions with their answer words only: the end-of-sequence token an answer
/// otherwise ends with is left out, so the loss and the prediction are the label word's alone
/// (MeZO's prompt-based objective; in a plain prompt, an EOS after `Yes` would cost a base
/// model tens of nats and swamp the label).
pub fn label_batch(enc: &Encoder, pairs: &[(&str, &str)], device: tch::Device) -> Result<QaBatch> {
    let items: Vec<(Vec<i64>, Vec<i64>)> = pairs
        .iter()
        .map(|(q, a)| {
            let (p, mut a) = enc.pair(q, a)?;
            if let (Some(e), Some(&last)) = (enc.tok.eos, a.last()) {
                if last == i64::from(e) && a.len() > 1 {
                    a.pop();
                }
            }
            Ok((p, a))
        })
        .collect::<Result<_>>()?;
    enc.pack(&items, device)
}

/// Share of `items` whose true answer word has the lower NLL, scoring `2 × per_forward`
/// sequences per forward pass.
pub fn yes_no_accuracy(
    model: &CausalLm,
    enc: &Encoder,
    items: &[QaItem],
    per_forward: usize,
) -> Result<f64> {
    let mut right = 0usize;
    tch::no_grad(|| -> Result<()> {
        for chunk in items.chunks(per_forward.max(1)) {
            let mut pairs = Vec::new();
            for q in chunk {
                for a in ANSWERS {
                    pairs.push((q.question.as_str(), a));
                }
            }
            let b = label_batch(enc, &pairs, model.device())?;
            let (lp, _) = scored_logprobs(model, &b)?;
            let nll = Vec::<f64>::try_from(-lp.sum_dim_intlist(1, false, tch::Kind::Double))?;
            for (i, q) in chunk.iter().enumerate() {
                let pick = if nll[2 * i] <= nll[2 * i + 1] {
                    ANSWERS[0]
                } else {
                    ANSWERS[1]
                };
                right += usize::from(pick == q.answer);
            }
        }
        Ok(())
    })?;
    Ok(right as f64 / items.len() as f64)
}

/// Resets the process's peak resident memory to its current size (Linux: `clear_refs` 5);
/// returns whether it could.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident memory since the start or the last [`reset_peak_rss`] (bytes),
/// from `/proc/self/status`.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Which yes/no task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum YesNoTask {
    /// Category membership of a word.
    #[default]
    Category,
    /// Whether a review is positive.
    Sentiment,
}

impl YesNoTask {
    /// Parses `category` or `sentiment`.
    pub fn parse(s: &str) -> Result<YesNoTask> {
        match s {
            "category" => Ok(YesNoTask::Category),
            "sentiment" => Ok(YesNoTask::Sentiment),
            o => Err(Error::config(
                "task",
                format!("unknown task `{o}` (category, sentiment)"),
            )),
        }
    }

    /// `n_train` training and `n_test` test questions of the task.
    pub fn questions(
        self,
        n_train: usize,
        n_test: usize,
        seed: u64,
    ) -> Result<(Vec<QaItem>, Vec<QaItem>)> {
        match self {
            YesNoTask::Category => yes_no_task(n_train, n_test, seed),
            YesNoTask::Sentiment => sentiment_task(n_train, n_test, seed),
        }
    }
}

const POSITIVE: [&str; 24] = [
    "wonderful",
    "brilliant",
    "delightful",
    "moving",
    "superb",
    "charming",
    "gripping",
    "beautiful",
    "hilarious",
    "excellent",
    "touching",
    "clever",
    "stunning",
    "magnificent",
    "enjoyable",
    "fantastic",
    "heartwarming",
    "inspiring",
    "masterful",
    "lovely",
    "powerful",
    "witty",
    "thrilling",
    "marvelous",
];
const NEGATIVE: [&str; 24] = [
    "awful",
    "boring",
    "dreadful",
    "dull",
    "terrible",
    "tedious",
    "clumsy",
    "painful",
    "forgettable",
    "bland",
    "messy",
    "lifeless",
    "dreary",
    "pointless",
    "disappointing",
    "mediocre",
    "sloppy",
    "tiresome",
    "unbearable",
    "weak",
    "shallow",
    "annoying",
    "lousy",
    "horrible",
];
const THINGS: [&str; 8] = [
    "movie", "film", "book", "novel", "play", "show", "album", "series",
];
const PARTS: [&str; 8] = [
    "The acting",
    "The story",
    "The ending",
    "The writing",
    "The music",
    "The plot",
    "The dialogue",
    "The pacing",
];

/// The sentiment task: reviews of two sentiment words of one polarity; the first two thirds of
/// each word list build training reviews, the last third test reviews.
pub fn sentiment_task(
    n_train: usize,
    n_test: usize,
    seed: u64,
) -> Result<(Vec<QaItem>, Vec<QaItem>)> {
    if n_train == 0 || n_test == 0 || n_train % 2 == 1 || n_test % 2 == 1 {
        return Err(Error::config(
            "sentiment",
            "even, non-empty training and test sets",
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cut = POSITIVE.len() * 2 / 3;
    let mut make = |n: usize, test: bool| -> Vec<QaItem> {
        (0..n)
            .map(|i| {
                let pos = i % 2 == 0;
                let words = if pos { &POSITIVE } else { &NEGATIVE };
                let pool = if test { &words[cut..] } else { &words[..cut] };
                let a = pool[rng.gen_range(0..pool.len())];
                let mut b = pool[rng.gen_range(0..pool.len())];
                while b == a {
                    b = pool[rng.gen_range(0..pool.len())];
                }
                let review = format!(
                    "The {} was {a}. {} was {b}.",
                    THINGS[rng.gen_range(0..THINGS.len())],
                    PARTS[rng.gen_range(0..PARTS.len())]
                );
                QaItem {
                    question: format!(
                        "Review: \"{review}\" Is this review positive? Answer Yes or No."
                    ),
                    answer: ANSWERS[usize::from(!pos)].to_string(),
                    paraphrased_question: String::new(),
                    paraphrased_answer: String::new(),
                    perturbed_answer: vec![ANSWERS[usize::from(pos)].to_string()],
                }
            })
            .collect()
    };
    let mut train = make(n_train, false);
    let test = make(n_test, true);
    train.shuffle(&mut rng);
    Ok((train, test))
}

/// Settings of the measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoBenchConfig {
    /// The task.
    #[serde(default)]
    pub task: YesNoTask,
    /// Training questions.
    pub n_train: usize,
    /// Test questions.
    pub n_test: usize,
    /// Questions per step.
    pub batch_size: usize,
    /// The optimizer and its settings (`steps` is the most steps taken).
    pub zo: ZoTuneConfig,
    /// Stop after this many seconds of training even if steps remain.
    pub time_budget_s: f64,
    /// Evaluate the test accuracy every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Train LoRA adapters instead of every parameter.
    pub lora: Option<LoraConfig>,
    /// How questions are put to the model ([`run_gguf`]; [`run`] takes an encoder).
    pub format: crate::tune::PromptFormat,
    /// Seed of the task.
    pub seed: u64,
}

/// What the measurement found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZoBenchReport {
    /// The settings.
    pub config: ZoBenchConfig,
    /// Test accuracy before training.
    pub zero_shot_accuracy: f64,
    /// Test accuracy after training.
    pub final_accuracy: f64,
    /// `(step, test accuracy)` along the way.
    pub curve: Vec<(usize, f64)>,
    /// Steps taken.
    pub steps: usize,
    /// Seconds of training (evaluations excluded).
    pub train_seconds: f64,
    /// Peak resident memory while evaluating the zero-shot accuracy (bytes), counted from the
    /// loaded model.
    pub peak_rss_inference: Option<u64>,
    /// Peak resident memory while training (and evaluating along the way), likewise.
    pub peak_rss_training: Option<u64>,
    /// The optimizer's log.
    pub log: Vec<ZoLog>,
    /// Parameters the optimizer perturbs.
    pub trained_parameters: i64,
}

/// Measures zeroth-order fine-tuning of `model` on the yes/no task. Memory is read as the
/// process's high-water mark, so call this in a fresh process for a clean figure.
pub fn run(model: &mut CausalLm, enc: &Encoder, cfg: &ZoBenchConfig) -> Result<ZoBenchReport> {
    let (train, test) = cfg.task.questions(cfg.n_train, cfg.n_test, cfg.seed)?;
    if cfg.batch_size == 0 {
        return Err(Error::config("batch_size", "must be positive"));
    }
    // Inference and training are measured at the same number of sequences per forward pass.
    let per = (cfg.batch_size / 2).max(1);
    let reset = reset_peak_rss();
    let zero = yes_no_accuracy(model, enc, &test, per)?;
    let peak_inf = peak_rss().filter(|_| reset);
    let reset = reset && reset_peak_rss();
    if let Some(l) = &cfg.lora {
        tch::manual_seed(cfg.seed as i64);
        model.add_lora(l.clone())?;
    }
    let trained_parameters = model
        .trainable()
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    if !(cfg.time_budget_s > 0.0 && cfg.time_budget_s <= 7.0 * 86400.0) {
        return Err(Error::config(
            "time_budget_s",
            format!("must be in (0, one week], got {}", cfg.time_budget_s),
        ));
    }
    let mut curve = vec![(0, zero)];
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5a4f);
    let mut cursor = train.len();
    let dev = model.device();
    let mut batch = |_: usize| {
        let mut pairs = Vec::with_capacity(cfg.batch_size);
        for _ in 0..cfg.batch_size {
            if cursor == train.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            let q = &train[order[cursor]];
            pairs.push((q.question.as_str(), q.answer.as_str()));
            cursor += 1;
        }
        label_batch(enc, &pairs, dev)
    };
    // One run of the optimizer (its state and seed stream are never restarted); evaluations
    // along the way are not counted in the training time.
    let start = Instant::now();
    let mut eval_s = 0.0;
    let mut after = |step: usize, m: &CausalLm| -> Result<bool> {
        if cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every) {
            let t = Instant::now();
            curve.push((step, yes_no_accuracy(m, enc, &test, per)?));
            eval_s += t.elapsed().as_secs_f64();
        }
        Ok(start.elapsed().as_secs_f64() - eval_s >= cfg.time_budget_s)
    };
    let (logs, steps) = zo_tune(model, &mut batch, &cfg.zo, 10, Some(&mut after))?;
    let train_s = start.elapsed().as_secs_f64() - eval_s;
    let final_accuracy = match curve.last() {
        Some(&(s, a)) if s == steps => a,
        _ => {
            let a = yes_no_accuracy(model, enc, &test, per)?;
            curve.push((steps, a));
            a
        }
    };
    Ok(ZoBenchReport {
        config: cfg.clone(),
        zero_shot_accuracy: zero,
        final_accuracy,
        curve,
        steps,
        train_seconds: train_s,
        peak_rss_inference: peak_inf,
        peak_rss_training: peak_rss().filter(|_| reset),
        log: logs,
        trained_parameters,
    })
}

/// A digest of every parameter's bytes (the base and any adapters), in name order: two runs
/// with one seed that end with the same digest ended with bit-identical weights.
pub fn weights_digest(model: &CausalLm) -> String {
    use std::hash::Hasher;
    let mut all: Vec<(String, tch::Tensor)> = model.named_parameters().into_iter().collect();
    if model.lora_config().is_some() {
        all.extend(
            model
                .trainable()
                .variables()
                .into_iter()
                .map(|(n, t)| (format!("lora.{n}"), t)),
        );
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    // FNV-1a over names and raw bytes.
    let mut h = Fnv(0xcbf29ce484222325);
    for (n, t) in all {
        h.write(n.as_bytes());
        let t = t.to_kind(tch::Kind::Float).contiguous();
        let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap_or_default();
        for x in v {
            h.write(&x.to_bits().to_le_bytes());
        }
    }
    format!("{:016x}", h.finish())
}

struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// Loads a GGUF model (default: SmolLM2-135M-Instruct from the venv), measures it with [`run`]
/// in its chat template, and writes `report.json` (the report, the model's path, the
/// environment and [`weights_digest`] of the tuned weights) to `out`, atomically.
pub fn run_gguf(
    gguf: Option<&std::path::Path>,
    cfg: &ZoBenchConfig,
    out: &std::path::Path,
) -> Result<ZoBenchReport> {
    let path = match gguf {
        Some(p) => p.to_path_buf(),
        None => crate::bench::smollm2_gguf()?,
    };
    let g = crate::gguf::Gguf::open(&path)?;
    let tok = crate::tokenizer::Tokenizer::from_gguf(&g)?;
    let mut model = CausalLm::from_gguf(&g, tch::Device::Cpu)?;
    drop(g);
    let enc = Encoder {
        tok: &tok,
        format: cfg.format,
        max_len: 128,
    };
    let r = run(&mut model, &enc, cfg)?;
    let report = serde_json::json!({
        "report": r,
        "model": path,
        "environment": crate::bench::environment(),
        "weights_digest": weights_digest(&model),
    });
    rustworthy_core::fsutil::write_json_atomic(&out.join("report.json"), &report)?;
    Ok(r)
}
