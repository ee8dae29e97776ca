//! Tokenizers and chat templates.
//!
//! A byte-level BPE tokenizer (GPT-2, SmolLM, Llama 3, Qwen2) is built with the `tokenizers`
//! crate from a GGUF file's metadata (vocabulary, merges, token types, pre-tokenizer name, special
//! token ids, chat template) or read from a Hugging Face `tokenizer.json`. Chat templates are the
//! model's own Jinja templates, rendered as `transformers` renders them (blocks trimmed and
//! left-stripped, `raise_exception` available) with a bounded amount of work.

use crate::gguf::{Gguf, Value};
use rustworthy_core::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// The Llama 3 pre-tokenizer split (also llama.cpp's `llama-bpe`, `dbrx`, `smaug-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The longest added (special) token a `tokenizer.json` may declare, in bytes.
pub const MAX_ADDED_TOKEN_BYTES: usize = 1024;

/// A tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// End-of-sequence token (for an instruct model, the end of a turn).
    pub eos: Option<u32>,
    /// Padding token.
    pub pad: Option<u32>,
    /// Whether encoding a prompt starts with `bos`.
    pub add_bos: bool,
    /// The model's Jinja chat template, if it has one.
    pub chat_template: Option<String>,
    source: PathBuf,
}

/// One turn of a conversation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A turn.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

fn tk_err(source: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::corrupt(source, format!("tokenizer: {what}: {e}"))
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.model = gpt2`, byte-level BPE).
    /// The pre-tokenizer follows `tokenizer.ggml.pre` as llama.cpp does: GPT-2's split, with
    /// digits split one by one first for `smollm`, `starcoder` and the like, or the Llama 3 or
    /// Qwen2 split; an unknown name is refused.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let src = g.path().to_path_buf();
        let model = g.get("tokenizer.ggml.model").and_then(Value::as_str);
        if model != Some("gpt2") {
            return Err(Error::corrupt(
                &src,
                format!(
                    "tokenizer: model `{}` is not supported (gpt2, byte-level BPE)",
                    model.unwrap_or("(none)")
                ),
            ));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = g
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::corrupt(&src, format!("tokenizer: no `{key}` array")))?;
            arr.iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        Error::corrupt(&src, format!("tokenizer: `{key}` holds a non-string"))
                    })
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges_raw = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::corrupt(
                &src,
                format!(
                    "tokenizer: {} token types for {} tokens",
                    types.len(),
                    tokens.len()
                ),
            ));
        }
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                Error::corrupt(
                    &src,
                    format!("tokenizer: merge {i} `{m}` is not two tokens"),
                )
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .build()
            .map_err(|e| tk_err(&src, "BPE", e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        inner.with_pre_tokenizer(Some(
            pre_tokenizer(pre).map_err(|m| tk_err(&src, "pre-tokenizer", m))?,
        ));
        inner.with_decoder(Some(ByteLevel::default()));
        // Control tokens (type 3) are special and matched whole; user-defined ones (type 4) are
        // matched whole but decoded like text.
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3)
            .map(|(s, _)| AddedToken::from(s.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&control);
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), false).normalized(false))
            .collect();
        inner.add_tokens(&user);
        let id = |k: &str| {
            g.get(&format!("tokenizer.ggml.{k}"))
                .and_then(Value::as_u64)
                .filter(|&i| (i as usize) < tokens.len())
                .map(|i| i as u32)
        };
        Ok(Tokenizer {
            inner,
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            pad: id("padding_token_id"),
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .map(|v| v == &Value::Bool(true))
                .unwrap_or(false),
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
            source: src,
        })
    }

    /// Reads a Hugging Face `tokenizer.json`, and from `tokenizer_config.json` beside it (when
    /// present) the chat template and the BOS/EOS/padding tokens.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| tk_err(path, "tokenizer.json is not JSON", e))?;
        // Real added tokens are short; a huge one makes matching them take minutes.
        if let Some(t) = v["added_tokens"].as_array().and_then(|a| {
            a.iter()
                .filter_map(|t| t["content"].as_str())
                .find(|c| c.len() > MAX_ADDED_TOKEN_BYTES)
        }) {
            return Err(tk_err(
                path,
                "tokenizer.json",
                format!(
                    "an added token of {} bytes (at most {MAX_ADDED_TOKEN_BYTES})",
                    t.len()
                ),
            ));
        }
        // The `tokenizers` crate panics on some malformed files (a decoder entry of the wrong
        // shape reaches an `expect`); that is a bad file, not a crash.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| {
                tk_err(
                    path,
                    "tokenizer.json does not parse",
                    "a malformed entry (rejected by the tokenizers crate)",
                )
            })?;
        let inner = parsed.map_err(|e| tk_err(path, "tokenizer.json does not parse", e))?;
        let mut tok = Tokenizer {
            inner,
            bos: None,
            eos: None,
            pad: None,
            add_bos: false,
            chat_template: None,
            source: path.to_path_buf(),
        };
        let cfg_path = path.with_file_name("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&cfg_path) {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| tk_err(&cfg_path, "tokenizer_config.json does not parse", e))?;
            let special = |k: &str| -> Option<u32> {
                let s = match &v[k] {
                    serde_json::Value::String(s) => s.as_str(),
                    serde_json::Value::Object(o) => o.get("content")?.as_str()?,
                    _ => return None,
                };
                tok.inner.token_to_id(s)
            };
            tok.bos = special("bos_token");
            tok.eos = special("eos_token");
            tok.pad = special("pad_token");
            tok.add_bos = match v["add_bos_token"].as_bool() {
                Some(b) => b,
                // Llama 3's files say nothing here and add BOS in tokenizer.json's
                // post-processor: ask it.
                None => tok.bos.is_some_and(|b| {
                    tok.inner
                        .encode("x", true)
                        .is_ok_and(|e| e.get_ids().first() == Some(&b))
                }),
            };
            tok.chat_template = v["chat_template"].as_str().map(str::to_string);
        }
        Ok(tok)
    }

    /// A word-level tokenizer over every word and punctuation run of `texts` (sorted, so the
    /// same texts always give the same ids), with `<pad>` (0), `<eos>` (1) and `<unk>` (2): the
    /// tokenizer of the small models trained from scratch on a closed synthetic corpus.
    pub fn word_level<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Tokenizer> {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let mut words = std::collections::BTreeSet::new();
        for t in texts {
            let mut pre = PreTokenizedString::from(t);
            Whitespace
                .pre_tokenize(&mut pre)
                .map_err(|e| Error::invalid(format!("word-level tokenizer: {e}")))?;
            for (w, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
                words.insert(w.to_string());
            }
        }
        let specials = ["<pad>", "<eos>", "<unk>"];
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for w in specials.iter().map(|s| s.to_string()).chain(words) {
            let n = vocab.len() as u32;
            vocab.entry(w).or_insert(n);
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("<unk>".into())
            .build()
            .map_err(|e| Error::invalid(format!("word-level tokenizer: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(Whitespace));
        inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::new(
            "##".into(),
            true,
        )));
        inner.add_special_tokens(
            &specials
                .iter()
                .map(|s| AddedToken::from(s.to_string(), true))
                .collect::<Vec<_>>(),
        );
        Ok(Tokenizer {
            inner,
            bos: None,
            eos: Some(1),
            pad: Some(0),
            add_bos: false,
            chat_template: None,
            source: PathBuf::from("(word-level)"),
        })
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json` (atomically), and its special
    /// tokens and template in `tokenizer_config.json` beside it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tk_err(path, "serialize", e))?;
        rustworthy_core::fsutil::atomic_write(path, json.as_bytes())?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let cfg = serde_json::json!({
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
            "pad_token": name(self.pad),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        });
        rustworthy_core::fsutil::write_json_atomic(
            &path.with_file_name("tokenizer_config.json"),
            &cfg,
        )
    }

    /// Token ids of `text`; `add_bos` prepends BOS when the tokenizer says so and the text
    /// does not start with it already (a chat template may write it). Special tokens written in
    /// the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tk_err(&self.source, "encode", e))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            if let Some(b) = self.bos {
                if enc.get_ids().first() != Some(&b) {
                    ids.push(b);
                }
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`; `skip_special` drops special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tk_err(&self.source, "decode", e))
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token spelled exactly `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Renders `messages` with the model's chat template (`add_generation_prompt` opens the
    /// assistant's turn). A model without a template is an error naming it.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            Error::invalid(format!(
                "{}: the tokenizer has no chat template",
                self.source.display()
            ))
        })?;
        render_chat(tpl, messages, add_generation_prompt, self)
    }
}

fn pre_tokenizer(name: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let byte_level = |regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    let split = |re: &str| -> std::result::Result<PreTokenizerWrapper, String> {
        Ok(PreTokenizerWrapper::Split(
            Split::new(
                SplitPattern::Regex(re.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| e.to_string())?,
        ))
    };
    Ok(match name {
        // GPT-2's split inside ByteLevel.
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => byte_level(true),
        // GPT-2's split after every digit stands alone (llama.cpp's list for `\p{N}` first).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ]))
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" | "pixtral" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(LLAMA3_SPLIT)?,
                byte_level(false),
            ]))
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(QWEN2_SPLIT)?,
                byte_level(false),
            ]))
        }
        other => return Err(format!("`{other}` is not a known pre-tokenizer")),
    })
}

/// Units of template work allowed; far above what a chat template needs for a long
/// conversation, it stops a template that loops without end.
const TEMPLATE_FUEL: u64 = 50_000_000;

fn render_chat(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    tok: &Tokenizer,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::invalid(format!("chat template does not parse: {e}")))?;
    let name = |id: Option<u32>| {
        id.and_then(|i| tok.inner.id_to_token(i))
            .unwrap_or_default()
    };
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => name(tok.bos),
        eos_token => name(tok.eos),
    };
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(|e| Error::invalid(format!("chat template: {e}")))
}
