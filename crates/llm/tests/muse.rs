//! MUSE's VerbMem and KnowMem: the prompt and stop strings as MUSE's code builds them, the
//! reference cut, the data folders, and the metrics on a small model whose greedy output is
//! known.

use rustworthy_llm::generate::{generate, GenerateOptions};
use rustworthy_llm::llama::{CausalLm, LlamaConfig};
use rustworthy_llm::muse::{
    cut_answer, knowmem, knowmem_prompt, read_muse_dir, synth_muse, verbmem, verbmem_reference,
    MuseFlavor, VerbItem,
};
use rustworthy_llm::tofu::{generate as synth, QaItem, SynthConfig};
use rustworthy_llm::tokenizer::Tokenizer;
use rustworthy_testkit::torch_lock;

fn qa(q: &str, a: &str) -> QaItem {
    QaItem {
        question: q.into(),
        answer: a.into(),
        paraphrased_question: String::new(),
        paraphrased_answer: String::new(),
        perturbed_answer: Vec::new(),
    }
}

#[test]
fn knowmem_prompt_and_stops_are_muses() {
    let icl = [qa("Who?", "Ann."), qa("When?", "1990.")];
    assert_eq!(
        knowmem_prompt(&icl, "Where?"),
        "Question: Who?\nAnswer: Ann.\n\nQuestion: When?\nAnswer: 1990.\n\nQuestion: Where?\nAnswer: "
    );
    assert_eq!(knowmem_prompt(&[], "Q"), "Question: Q\nAnswer: ");
    assert_eq!(cut_answer("Paris.\n\nQuestion: next"), "Paris.");
    assert_eq!(cut_answer("Paris\nQuestion"), "Paris");
    assert_eq!(cut_answer("Paris Question: x"), "Paris ");
    assert_eq!(cut_answer("Paris\nis big"), "Paris\nis big");
}

#[test]
fn muse_folders_are_read_and_missing_ones_say_where_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let e = read_muse_dir(dir.path()).err().unwrap().to_string();
    assert!(e.contains("MUSE") && e.contains("load_data.py"), "{e}");
    std::fs::create_dir_all(dir.path().join("verbmem")).unwrap();
    std::fs::create_dir_all(dir.path().join("knowmem")).unwrap();
    std::fs::write(
        dir.path().join("verbmem/forget.json"),
        r#"[{"prompt": "Once upon", "gt": "a time"}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("knowmem/forget_qa.json"),
        r#"[{"question": "Q?", "answer": "A."}]"#,
    )
    .unwrap();
    let d = read_muse_dir(dir.path()).unwrap();
    assert_eq!(d.verbmem_forget[0].gt, "a time");
    assert_eq!(d.knowmem_forget[0].answer, "A.");
    assert!(d.knowmem_retain.is_empty() && d.knowmem_forget_icl.is_empty());
    std::fs::write(
        dir.path().join("knowmem/retain_qa.json"),
        "[{\"question\": 3}]",
    )
    .unwrap();
    let e = read_muse_dir(dir.path()).err().unwrap().to_string();
    assert!(e.contains("retain_qa.json"), "{e}");
}

#[test]
fn the_metrics_score_a_models_own_greedy_text_as_perfect() {
    let _torch = torch_lock();
    let texts = ["the cat sat on the mat and the dog ran to the park Question : Answer"];
    let tok = Tokenizer::word_level(texts).unwrap();
    tch::manual_seed(0);
    let model = CausalLm::new(
        LlamaConfig {
            arch: Default::default(),
            vocab_size: tok.vocab_size() as i64,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
        },
        tch::Device::Cpu,
    )
    .unwrap();
    let prompts = ["the cat sat", "the dog ran to"];
    // What the model continues each prompt with, greedily.
    let own: Vec<String> = prompts
        .iter()
        .map(|p| {
            let ids: Vec<i64> = tok
                .encode(p, true)
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect();
            let g = generate(&model, &ids, &GenerateOptions::greedy(12, tok.eos)).unwrap();
            let g: Vec<u32> = g.into_iter().map(|t| t as u32).collect();
            tok.decode(&g, true).unwrap()
        })
        .collect();
    let items: Vec<VerbItem> = prompts
        .iter()
        .zip(&own)
        .map(|(p, g)| VerbItem {
            prompt: p.to_string(),
            gt: g.clone(),
        })
        .collect();
    for flavor in [MuseFlavor::Muse, MuseFlavor::OpenUnlearning] {
        let s = verbmem(&model, &tok, &items, 12, flavor).unwrap();
        assert_eq!(s.generated, own);
        for (x, g) in s.items.iter().zip(&own) {
            // A continuation with words scores 1 against itself (an empty one scores 0).
            let want = if g.trim().is_empty() { 0.0 } else { 1.0 };
            assert!((x - want).abs() < 1e-12, "{flavor:?}: {x} for `{g}`");
        }
    }
    // Against another text: below 1.
    let other = [VerbItem {
        prompt: "the cat sat".into(),
        gt: "zebra zebra zebra".into(),
    }];
    assert!(
        verbmem(&model, &tok, &other, 12, MuseFlavor::Muse)
            .unwrap()
            .rouge_l_f1
            < 1.0
    );
    // MUSE scores against the first max_new_tokens tokens of the reference only.
    assert_eq!(
        verbmem_reference(&tok, "the cat sat on the mat", 3, MuseFlavor::Muse).unwrap(),
        "the cat sat"
    );
    assert_eq!(
        verbmem_reference(&tok, "the cat sat on", 3, MuseFlavor::OpenUnlearning).unwrap(),
        "the cat sat on"
    );
    // KnowMem: the answer as the model gives it after the examples, cut at the stop strings.
    let icl = [qa("the cat", "sat")];
    let k = knowmem(
        &model,
        &tok,
        &[qa("the dog", "ran")],
        &icl,
        8,
        MuseFlavor::Muse,
    )
    .unwrap();
    assert_eq!(k.generated.len(), 1);
    assert!(!k.generated[0].contains("Question:"));
    assert!((0.0..=1.0).contains(&k.rouge_l_f1));
    // Bad input is refused.
    assert!(verbmem(&model, &tok, &[], 12, MuseFlavor::Muse).is_err());
    assert!(knowmem(&model, &tok, &[qa("a", "b")], &icl, 0, MuseFlavor::Muse).is_err());
}

#[test]
fn tofu_synth_gives_muse_shaped_items() {
    let b = synth(&SynthConfig::mini()).unwrap();
    let d = synth_muse(&b, "forget10", "retain90", 20, 12, 5).unwrap();
    assert_eq!(d.knowmem_forget.len(), 80);
    assert_eq!(d.knowmem_retain.len(), 80);
    assert_eq!(d.knowmem_forget_icl.len(), 5);
    assert_eq!(d.verbmem_forget.len(), 4);
    for v in &d.verbmem_forget {
        assert_eq!(v.prompt.split_whitespace().count(), 12);
        assert!(!v.gt.is_empty());
    }
    assert!(synth_muse(&b, "forget10", "retain90", 0, 12, 5).is_err());
}
