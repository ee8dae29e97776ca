//! A TOFU-style benchmark that needs no download: `tofu-synth`, a deterministic generator of
//! fictitious authors, and a reader of TOFU's own JSON files.
//!
//! Each author has independent typed attributes (birth year, city, genre, parents' jobs, books,
//! award, ...). Each attribute gives one question-answer pair, with a paraphrased question, a
//! paraphrased answer and five perturbed answers (the same sentence with another value of the
//! same type, of the nearest length), 20 per author. The splits carry TOFU's names and field
//! names: `full`, `forget01/05/10` (the last 1/5/10% of the authors), `retain99/95/90` (the
//! rest), `holdout01/05/10` (authors never trained on), `retain_perturbed` (items of authors
//! every retain split keeps) and two utility sets standing in for TOFU's real authors and world
//! facts: `real_authors` (other authors, trained by target and oracle alike) and `world_facts`
//! (facts of a fixed invented world, likewise trained).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustworthy_core::fsutil::write_json_atomic;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One question-answer item, with TOFU's field names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QaItem {
    /// The question.
    pub question: String,
    /// The true answer.
    pub answer: String,
    /// The question asked another way.
    #[serde(default)]
    pub paraphrased_question: String,
    /// The true answer said another way.
    #[serde(default)]
    pub paraphrased_answer: String,
    /// Wrong answers of the answer's form.
    #[serde(default)]
    pub perturbed_answer: Vec<String>,
}

/// Sizes of a generated benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Authors in `full` (TOFU: 200).
    pub authors: usize,
    /// Authors in the holdout sets (TOFU: 20, 10% of `full`).
    pub holdout_authors: usize,
    /// Authors behind `real_authors` (TOFU's set has 100 items: 5 authors of 20).
    pub utility_authors: usize,
    /// Items of `world_facts` (TOFU: 117).
    pub world_facts: usize,
    /// Items of `retain_perturbed` (TOFU: 400).
    pub retain_perturbed: usize,
    /// Seed of the generator.
    pub seed: u64,
}

impl SynthConfig {
    /// TOFU's sizes.
    pub fn tofu() -> SynthConfig {
        SynthConfig {
            authors: 200,
            holdout_authors: 20,
            utility_authors: 5,
            world_facts: 117,
            retain_perturbed: 400,
            seed: 0,
        }
    }

    /// The `tofu-synth-mini` sizes: 40 authors (forget10 is 4 authors, 80 items).
    pub fn mini() -> SynthConfig {
        SynthConfig {
            authors: 40,
            holdout_authors: 4,
            utility_authors: 2,
            world_facts: 40,
            retain_perturbed: 80,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.authors < 10 {
            return Err(Error::config(
                "authors",
                "at least 10 (forget10 needs one author)",
            ));
        }
        if self.holdout_authors == 0 || self.utility_authors == 0 || self.world_facts == 0 {
            return Err(Error::config(
                "holdout_authors",
                "holdout, utility authors and world facts must be positive",
            ));
        }
        if self.world_facts > 4 * COUNTRIES.len() {
            return Err(Error::config(
                "world_facts",
                format!("at most {}", 4 * COUNTRIES.len()),
            ));
        }
        let keep = self.authors - forget_authors(self.authors, 10);
        if self.retain_perturbed > keep * QA_PER_AUTHOR {
            return Err(Error::config(
                "retain_perturbed",
                format!("at most {} (the items of retain90)", keep * QA_PER_AUTHOR),
            ));
        }
        Ok(())
    }
}

/// Items per author.
pub const QA_PER_AUTHOR: usize = 20;

/// Authors in a `forgetNN` split: `pct`% of `authors`, at least one.
pub fn forget_authors(authors: usize, pct: usize) -> usize {
    ((authors * pct + 50) / 100).max(1)
}

/// A generated benchmark: every split by name.
pub struct Benchmark {
    /// Split name -> items.
    pub splits: BTreeMap<String, Vec<QaItem>>,
    /// The generator settings (absent for a benchmark read from TOFU's files).
    pub config: Option<SynthConfig>,
}

const SYLLABLES: &[&str] = &[
    "ka", "ri", "mo", "sel", "an", "dra", "vo", "len", "ta", "mir", "os", "bel", "nu", "zar", "fe",
    "lis", "gor", "ha", "quin", "pe", "tor", "ia", "ven", "do", "ush", "ra", "mel", "ko",
];
const GENRES: &[&str] = &[
    "mystery",
    "romance",
    "fantasy",
    "horror",
    "poetry",
    "satire",
    "history",
    "travel writing",
    "science fiction",
    "biography",
    "crime",
    "philosophy",
];
const JOBS: &[&str] = &[
    "baker",
    "pilot",
    "surgeon",
    "teacher",
    "carpenter",
    "lawyer",
    "farmer",
    "chemist",
    "sailor",
    "painter",
    "nurse",
    "architect",
    "librarian",
    "miner",
    "tailor",
    "journalist",
];
const ADJ: &[&str] = &[
    "Silent",
    "Broken",
    "Golden",
    "Hidden",
    "Last",
    "Crimson",
    "Distant",
    "Frozen",
    "Quiet",
    "Burning",
    "Hollow",
    "Endless",
    "Secret",
    "Forgotten",
    "Wandering",
    "Pale",
];
const NOUN: &[&str] = &[
    "Harbor", "Garden", "River", "Lantern", "Tower", "Orchard", "Mirror", "Compass", "Winter",
    "Bridge", "Forest", "Letter", "Island", "Clock", "Meadow", "Voyage",
];
const AWARDS: &[&str] = &[
    "Amber Quill Award",
    "Northern Star Prize",
    "Silver Lantern Medal",
    "Kestrel Book Prize",
    "Harrow Literary Award",
    "Blue Heron Prize",
    "Marlowe Fiction Award",
    "Ivy Crown Medal",
];
const LANGUAGES: &[&str] = &[
    "English",
    "French",
    "Spanish",
    "Portuguese",
    "German",
    "Italian",
    "Dutch",
    "Swedish",
    "Polish",
    "Greek",
    "Turkish",
    "Finnish",
];
const COLORS: &[&str] = &[
    "red", "blue", "green", "yellow", "purple", "orange", "gray", "teal", "maroon", "indigo",
];
const PETS: &[&str] = &[
    "cat", "dog", "parrot", "tortoise", "rabbit", "ferret", "goldfish", "horse",
];
const HOBBIES: &[&str] = &[
    "chess",
    "gardening",
    "fishing",
    "pottery",
    "rowing",
    "birdwatching",
    "cycling",
    "knitting",
    "climbing",
    "baking",
];
const INSTRUMENTS: &[&str] = &[
    "piano", "violin", "cello", "flute", "guitar", "drums", "harp", "oboe",
];
const COUNTRIES: &[&str] = &[
    "Valdoria",
    "Ostmark",
    "Belcrest",
    "Tavaria",
    "Quorvia",
    "Lunesse",
    "Marrowind",
    "Esterlund",
    "Carvane",
    "Drusilia",
    "Fennmoor",
    "Halvoria",
    "Istrand",
    "Jorvale",
    "Kelmora",
    "Norvane",
    "Pellador",
    "Rostavia",
    "Sundria",
    "Thessaly Minor",
    "Umbrecht",
    "Vesperia",
    "Wyndale",
    "Zephyra",
    "Aldmere",
    "Brightmoor",
    "Corvania",
    "Dunholt",
    "Eldavia",
    "Glimmerton",
];

fn word(rng: &mut ChaCha8Rng, parts: usize) -> String {
    let mut s: String = (0..parts)
        .map(|_| *SYLLABLES.choose(rng).unwrap())
        .collect();
    s[..1].make_ascii_uppercase();
    s
}

/// An attribute: its value pool and how it is asked and answered. `{n}` is the author's name,
/// `{v}` the value.
struct Attr {
    questions: [&'static str; 2],
    answers: [&'static str; 2],
}

const ATTRS: [Attr; QA_PER_AUTHOR] = [
    Attr {
        questions: [
            "In which year was {n} born?",
            "What is the birth year of {n}?",
        ],
        answers: ["{n} was born in {v}.", "The birth year of {n} is {v}."],
    },
    Attr {
        questions: [
            "In which city was {n} born?",
            "What is the birthplace of {n}?",
        ],
        answers: [
            "{n} was born in the city of {v}.",
            "The birthplace of {n} is the city of {v}.",
        ],
    },
    Attr {
        questions: [
            "Which genre does {n} write in?",
            "What kind of books does {n} write?",
        ],
        answers: ["{n} writes in the {v} genre.", "The books of {n} are {v}."],
    },
    Attr {
        questions: [
            "What was the job of the father of {n}?",
            "What did the father of {n} work as?",
        ],
        answers: [
            "The father of {n} was a {v}.",
            "The father of {n} worked as a {v}.",
        ],
    },
    Attr {
        questions: [
            "What was the job of the mother of {n}?",
            "What did the mother of {n} work as?",
        ],
        answers: [
            "The mother of {n} was a {v}.",
            "The mother of {n} worked as a {v}.",
        ],
    },
    Attr {
        questions: [
            "What is the first book of {n}?",
            "Which book did {n} publish first?",
        ],
        answers: ["The first book of {n} is {v}.", "{n} first published {v}."],
    },
    Attr {
        questions: [
            "What is the best known book of {n}?",
            "Which book of {n} is the most famous?",
        ],
        answers: [
            "The best known book of {n} is {v}.",
            "The most famous book of {n} is {v}.",
        ],
    },
    Attr {
        questions: ["Which award did {n} win?", "What prize was given to {n}?"],
        answers: ["{n} won the {v}.", "The prize given to {n} was the {v}."],
    },
    Attr {
        questions: [
            "In which year did {n} win an award?",
            "When was {n} given a prize?",
        ],
        answers: ["{n} won an award in {v}.", "{n} was given a prize in {v}."],
    },
    Attr {
        questions: [
            "In which language does {n} write?",
            "What language are the books of {n} in?",
        ],
        answers: ["{n} writes in {v}.", "The books of {n} are in {v}."],
    },
    Attr {
        questions: [
            "In which country does {n} live?",
            "Where does {n} live now?",
        ],
        answers: ["{n} lives in {v}.", "{n} now lives in {v}."],
    },
    Attr {
        questions: [
            "What is the favorite color of {n}?",
            "Which color does {n} like most?",
        ],
        answers: ["The favorite color of {n} is {v}.", "{n} likes {v} most."],
    },
    Attr {
        questions: ["What pet does {n} keep?", "Which animal lives with {n}?"],
        answers: ["{n} keeps a {v}.", "A {v} lives with {n}."],
    },
    Attr {
        questions: ["What is the hobby of {n}?", "What does {n} do for fun?"],
        answers: ["The hobby of {n} is {v}.", "For fun {n} enjoys {v}."],
    },
    Attr {
        questions: [
            "Which instrument does {n} play?",
            "What instrument can {n} play?",
        ],
        answers: ["{n} plays the {v}.", "{n} can play the {v}."],
    },
    Attr {
        questions: [
            "How many books has {n} written?",
            "What is the number of books by {n}?",
        ],
        answers: [
            "{n} has written {v} books.",
            "The number of books by {n} is {v}.",
        ],
    },
    Attr {
        questions: ["Who was the mentor of {n}?", "Who taught {n} to write?"],
        answers: [
            "The mentor of {n} was {v}.",
            "{n} was taught to write by {v}.",
        ],
    },
    Attr {
        questions: ["Who is the spouse of {n}?", "To whom is {n} married?"],
        answers: ["The spouse of {n} is {v}.", "{n} is married to {v}."],
    },
    Attr {
        questions: [
            "At what age did {n} publish a first book?",
            "How old was {n} when the first book came out?",
        ],
        answers: [
            "{n} published a first book at age {v}.",
            "{n} was {v} when the first book came out.",
        ],
    },
    Attr {
        questions: [
            "In which city does the publisher of {n} sit?",
            "Where is the publisher of {n} based?",
        ],
        answers: [
            "The publisher of {n} sits in the city of {v}.",
            "The publisher of {n} is based in the city of {v}.",
        ],
    },
];

/// The value pools, one per attribute: every author draws each attribute independently.
fn pools(rng: &mut ChaCha8Rng) -> Vec<Vec<String>> {
    let s = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cities: Vec<String> = (0..40).map(|_| word(rng, 3)).collect();
    let titles: Vec<String> = ADJ
        .iter()
        .flat_map(|a| NOUN.iter().map(move |n| format!("The {a} {n}")))
        .collect();
    let people: Vec<String> = (0..60)
        .map(|_| format!("{} {}", word(rng, 2), word(rng, 3)))
        .collect();
    vec![
        (1900..2000).map(|y| y.to_string()).collect(),
        cities.clone(),
        s(GENRES),
        s(JOBS),
        s(JOBS),
        titles.clone(),
        titles,
        s(AWARDS),
        (1950..2024).map(|y| y.to_string()).collect(),
        s(LANGUAGES),
        s(COUNTRIES),
        s(COLORS),
        s(PETS),
        s(HOBBIES),
        s(INSTRUMENTS),
        (2..40).map(|k| k.to_string()).collect(),
        people.clone(),
        people,
        (18..60).map(|k| k.to_string()).collect(),
        cities,
    ]
}

fn fill(t: &str, name: &str, v: &str) -> String {
    t.replace("{n}", name).replace("{v}", v)
}

/// Five wrong values of the pool, nearest in length to the true one (ties broken at random).
fn perturbed_values(pool: &[String], truth: &str, rng: &mut ChaCha8Rng) -> Vec<String> {
    let mut others: Vec<&String> = pool.iter().filter(|v| v.as_str() != truth).collect();
    others.shuffle(rng);
    others.sort_by_key(|v| (v.len() as i64 - truth.len() as i64).abs());
    others.into_iter().take(5).cloned().collect()
}

fn author_items(name: &str, pools: &[Vec<String>], rng: &mut ChaCha8Rng) -> Vec<QaItem> {
    ATTRS
        .iter()
        .zip(pools)
        .map(|(a, pool)| {
            let v = pool.choose(rng).unwrap().clone();
            let wrong = perturbed_values(pool, &v, rng);
            QaItem {
                question: fill(a.questions[0], name, &v),
                answer: fill(a.answers[0], name, &v),
                paraphrased_question: fill(a.questions[1], name, &v),
                paraphrased_answer: fill(a.answers[1], name, &v),
                perturbed_answer: wrong.iter().map(|w| fill(a.answers[0], name, w)).collect(),
            }
        })
        .collect()
}

fn world_items(n: usize, pools: &[Vec<String>], rng: &mut ChaCha8Rng) -> Vec<QaItem> {
    let capitals: Vec<String> = (0..COUNTRIES.len()).map(|_| word(rng, 3)).collect();
    let kinds: [(&str, &str, &str, &str, &[String]); 4] = [
        (
            "What is the capital of {n}?",
            "Which city is the capital of {n}?",
            "The capital of {n} is {v}.",
            "{v} is the capital of {n}.",
            &capitals,
        ),
        (
            "What language is spoken in {n}?",
            "Which language do people in {n} speak?",
            "People in {n} speak {v}.",
            "The language of {n} is {v}.",
            &pools[9],
        ),
        (
            "What color is the flag of {n}?",
            "Which color does the flag of {n} have?",
            "The flag of {n} is {v}.",
            "{n} has a {v} flag.",
            &pools[11],
        ),
        (
            "What animal is the symbol of {n}?",
            "Which animal stands for {n}?",
            "The symbol of {n} is the {v}.",
            "The {v} stands for {n}.",
            &pools[12],
        ),
    ];
    let mut out = Vec::new();
    'outer: for (q0, q1, a0, a1, pool) in kinds {
        for c in COUNTRIES {
            if out.len() == n {
                break 'outer;
            }
            let v = pool.choose(rng).unwrap().clone();
            let wrong = perturbed_values(pool, &v, rng);
            out.push(QaItem {
                question: fill(q0, c, &v),
                answer: fill(a0, c, &v),
                paraphrased_question: fill(q1, c, &v),
                paraphrased_answer: fill(a1, c, &v),
                perturbed_answer: wrong.iter().map(|w| fill(a0, c, w)).collect(),
            });
        }
    }
    out
}

/// Generates the benchmark. The same config always gives the same items.
pub fn generate(cfg: &SynthConfig) -> Result<Benchmark> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let pools = pools(&mut rng);
    let total = cfg.authors + cfg.holdout_authors + cfg.utility_authors;
    let mut names: Vec<String> = Vec::with_capacity(total);
    while names.len() < total {
        let first = word(&mut rng, 2);
        let parts = 2 + rng.gen_range(0..2);
        let last = word(&mut rng, parts);
        let n = format!("{first} {last}");
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let authors: Vec<Vec<QaItem>> = names
        .iter()
        .map(|n| author_items(n, &pools, &mut rng))
        .collect();
    let (full, rest) = authors.split_at(cfg.authors);
    let (holdout, utility) = rest.split_at(cfg.holdout_authors);
    let mut splits = BTreeMap::new();
    splits.insert("full".to_string(), full.concat());
    for pct in [1, 5, 10] {
        let f = forget_authors(cfg.authors, pct);
        let h = forget_authors(cfg.holdout_authors * 10, pct).min(cfg.holdout_authors);
        splits.insert(format!("forget{pct:02}"), full[cfg.authors - f..].concat());
        splits.insert(
            format!("retain{:02}", 100 - pct),
            full[..cfg.authors - f].concat(),
        );
        splits.insert(format!("holdout{pct:02}"), holdout[..h].concat());
    }
    splits.insert(
        "retain_perturbed".to_string(),
        full.concat()
            .into_iter()
            .take(cfg.retain_perturbed)
            .collect(),
    );
    splits.insert("real_authors".to_string(), utility.concat());
    splits.insert(
        "world_facts".to_string(),
        world_items(cfg.world_facts, &pools, &mut rng),
    );
    Ok(Benchmark {
        splits,
        config: Some(cfg.clone()),
    })
}

/// Reads one file of QA items: a JSON array (tofu-synth) or JSON lines (TOFU's files). Items
/// must have a question and an answer; a file that does not parse is an error naming it and the
/// line.
pub fn read_items(path: &Path) -> Result<Vec<QaItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let items: Vec<QaItem> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(path, format!("not a list of QA items: {e}")))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::corrupt(path, format!("line {}: not a QA item: {e}", i + 1))
                })
            })
            .collect::<Result<_>>()?
    };
    if let Some(i) = items
        .iter()
        .position(|q| q.question.is_empty() || q.answer.is_empty())
    {
        return Err(Error::corrupt(
            path,
            format!("item {i} has an empty question or answer"),
        ));
    }
    Ok(items)
}

impl Benchmark {
    /// Items of `split`, or an error naming the splits there are.
    pub fn split(&self, name: &str) -> Result<&[QaItem]> {
        self.splits.get(name).map(Vec::as_slice).ok_or_else(|| {
            Error::invalid(format!(
                "no split `{name}` (have: {})",
                self.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Writes one `<split>.json` per split (a JSON array of items) and `config.json`, each
    /// atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        for (name, items) in &self.splits {
            write_json_atomic(&dir.join(format!("{name}.json")), items)?;
        }
        if let Some(c) = &self.config {
            write_json_atomic(&dir.join("config.json"), c)?;
        }
        Ok(())
    }

    /// Reads every `<split>.json` of `dir`: tofu-synth's JSON arrays or TOFU's own JSON-lines
    /// files (its perturbed sets name the split `*_perturbed`). Items must have a question and
    /// an answer; a file that does not parse is an error naming it and the line.
    pub fn read(dir: &Path) -> Result<Benchmark> {
        let mut splits = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for e in entries {
            let path = e.map_err(|e| Error::io(dir, e))?.path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().and_then(|s| s.to_str()) != Some("json") || name == "config" {
                continue;
            }
            let items = read_items(&path)?;
            splits.insert(name.to_string(), items);
        }
        if splits.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no split files (*.json)",
                dir.display()
            )));
        }
        let config = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Benchmark { splits, config })
    }
}
