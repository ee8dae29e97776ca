//! An interrupted sampler stops with an error (its own test binary: the interrupt check is
//! process-wide).

use rustworthy_diffusion::sample::{generate, Sampler};

mod common;
use common::model;

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn an_interrupted_sampler_stops_with_an_error() {
    // The first installed check stays for the process, so it reads a flag.
    rustworthy_core::progress::set_interrupt_check(stop_requested);
    let m = model(3);
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = generate(
        &m,
        &Sampler::Ddim { steps: 5, eta: 0.0 },
        &[0, 1],
        2,
        2.0,
        8,
        0,
    );
    STOP.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(r.unwrap_err().to_string().contains("interrupted"));
    let x = generate(&m, &Sampler::Ddpm { steps: 5 }, &[0, 1], 2, 2.0, 8, 0).unwrap();
    assert_eq!(x.size(), [4, 1, 8, 8]);
    let again = generate(&m, &Sampler::Ddpm { steps: 5 }, &[0, 1], 2, 2.0, 8, 0).unwrap();
    assert!(x.equal(&again), "the same seed gives the same images");
}
