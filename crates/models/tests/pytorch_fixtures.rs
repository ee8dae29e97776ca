//! The committed PyTorch fixtures (tests/fixtures/models, written by
//! scripts/ref/export_fixtures.py) load and reproduce PyTorch's outputs.

mod common;

use rustworthy_testkit::torch_lock;

const TOL: f64 = 1e-5;

#[test]
fn committed_fixtures_match_pytorch() {
    let _torch = torch_lock();
    let reports = common::check_fixture_dir(&common::fixture_dir());
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["mlp", "lenet", "resnet20"]);
    for r in &reports {
        eprintln!("{r:?}");
        assert!(
            r.eval_diff <= TOL,
            "{}: eval logits differ by {}",
            r.name,
            r.eval_diff
        );
        assert!(
            r.train_diff <= TOL,
            "{}: train logits differ by {}",
            r.name,
            r.train_diff
        );
        assert!(
            r.buffer_diff <= TOL,
            "{}: BN buffers differ by {}",
            r.name,
            r.buffer_diff
        );
    }
}
