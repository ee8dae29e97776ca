//! Collectives and synchronized batch norm on loopback, with every rank a thread of this process.

use rustworthy_dist::ProcessGroup;
use std::time::Duration;
use tch::{Kind, Tensor};

/// Output, input gradient, weight and bias gradients, running mean and variance of one rank.
type RankResult = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `f(group)` on `world` ranks (threads) and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(ProcessGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let pg =
                    ProcessGroup::connect("127.0.0.1", port, rank, world, Duration::from_secs(30))
                        .expect("join");
                f(pg)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn all_reduce_broadcast_barrier() {
    assert!(ProcessGroup::gloo_available(), "this build lacks Gloo");
    let out = on_ranks(3, |pg| {
        let r = pg.rank() as f64;
        let t = Tensor::from_slice(&[r, 1.0, 10.0 * r]).to_kind(Kind::Float);
        pg.all_reduce_sum(&t).unwrap();
        let b = Tensor::from_slice(&[r + 5.0]);
        pg.broadcast(&b, 2).unwrap();
        pg.barrier().unwrap();
        let m = pg.all_reduce_f64(&[r, 2.0]).unwrap();
        (
            Vec::<f32>::try_from(&t).unwrap(),
            f64::try_from(&b.view([-1]).get(0)).unwrap(),
            m,
        )
    });
    for (t, b, m) in out {
        assert_eq!(t, vec![3.0, 3.0, 30.0]);
        assert_eq!(b, 7.0);
        assert_eq!(m, vec![3.0, 6.0]);
    }
}

#[test]
fn single_group_is_the_identity_and_bad_ranks_are_named() {
    let pg = ProcessGroup::single();
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    pg.all_reduce_sum(&t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
    let e = ProcessGroup::connect("127.0.0.1", 1, 3, 2, Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("rank"), "{e}");
    let e = pg.broadcast(&t, 1).unwrap_err();
    assert!(e.to_string().contains("root"), "{e}");
}

#[test]
fn a_missing_peer_fails_within_the_timeout() {
    // Rank 1 never comes: rank 0's rendezvous must end with an error, not hang.
    let port = free_port();
    let t0 = std::time::Instant::now();
    let e = ProcessGroup::connect("127.0.0.1", port, 0, 2, Duration::from_secs(2)).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("could not join"), "{e}");
}

#[test]
fn sync_batch_norm_equals_batch_norm_over_the_global_batch() {
    tch::manual_seed(3);
    let world = 2usize;
    let x = Tensor::randn([8, 3, 4, 4], (Kind::Float, tch::Device::Cpu)) * 2.0 + 0.5;
    let r = Tensor::randn([8, 3, 4, 4], (Kind::Float, tch::Device::Cpu));
    let w0 = Tensor::from_slice(&[1.0f32, 0.5, 2.0]);
    let b0 = Tensor::from_slice(&[0.0f32, 0.1, -0.3]);
    // One process, the whole batch.
    let xg = x.copy().set_requires_grad(true);
    let w = w0.copy().set_requires_grad(true);
    let b = b0.copy().set_requires_grad(true);
    let rm = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
    let rv = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
    let y = xg.batch_norm(
        Some(&w),
        Some(&b),
        Some(&rm),
        Some(&rv),
        true,
        0.1,
        1e-5,
        true,
    );
    (&y * &r).sum(Kind::Float).backward();
    let want = (y.detach(), xg.grad(), w.grad(), b.grad(), rm, rv);
    let (xs, rs) = (x.shallow_clone(), r.shallow_clone());
    let (w0c, b0c) = (w0.shallow_clone(), b0.shallow_clone());
    // Tensors are not Send: each rank rebuilds its inputs from plain vectors.
    let xv = Vec::<f32>::try_from(&xs.view([-1])).unwrap();
    let rv_ = Vec::<f32>::try_from(&rs.view([-1])).unwrap();
    let wv = Vec::<f32>::try_from(&w0c).unwrap();
    let bv = Vec::<f32>::try_from(&b0c).unwrap();
    let got = on_ranks(world, move |pg| {
        let x = Tensor::from_slice(&xv).view([8, 3, 4, 4]);
        let r = Tensor::from_slice(&rv_).view([8, 3, 4, 4]);
        let lo = 4 * pg.rank() as i64;
        let xl = x.narrow(0, lo, 4).copy().set_requires_grad(true);
        let w = Tensor::from_slice(&wv).set_requires_grad(true);
        let b = Tensor::from_slice(&bv).set_requires_grad(true);
        let rm = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
        let rvar = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
        let y = pg
            .sync_batch_norm(&xl, Some(&w), Some(&b), Some(&rm), Some(&rvar), 0.1, 1e-5)
            .unwrap();
        (&y * r.narrow(0, lo, 4)).sum(Kind::Float).backward();
        let flat = |t: &Tensor| Vec::<f32>::try_from(&t.reshape([-1])).unwrap();
        (
            flat(&y.detach()),
            flat(&xl.grad()),
            flat(&w.grad()),
            flat(&b.grad()),
            flat(&rm),
            flat(&rvar),
        )
    });
    let close = |a: &[f32], b: &Tensor, what: &str| {
        let b = Vec::<f32>::try_from(&b.reshape([-1])).unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                "{what}[{i}]: {p} vs {q}"
            );
        }
    };
    let cat = |i: usize| -> Vec<f32> {
        got.iter()
            .flat_map(|g| match i {
                0 => g.0.clone(),
                _ => g.1.clone(),
            })
            .collect()
    };
    close(&cat(0), &want.0, "output");
    close(&cat(1), &want.1, "input gradient");
    let sum = |f: &dyn Fn(&RankResult) -> Vec<f32>| {
        let mut acc = vec![0.0f32; 3];
        for g in &got {
            for (a, v) in acc.iter_mut().zip(f(g)) {
                *a += v;
            }
        }
        acc
    };
    close(
        &sum(&|g| g.2.clone()),
        &want.2,
        "weight gradient (summed over ranks)",
    );
    close(
        &sum(&|g| g.3.clone()),
        &want.3,
        "bias gradient (summed over ranks)",
    );
    for g in &got {
        close(&g.4, &want.4, "running mean");
        close(&g.5, &want.5, "running var");
    }
}
