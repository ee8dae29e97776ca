//! Times one sparse CGE step per layer on random data (LeNet-5, 28x28).
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_zo::ZoNet;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let arch = match std::env::args().nth(1).as_deref() {
        Some("resnet20") => Arch::Resnet20,
        _ => Arch::Lenet,
    };
    let b: i64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let spec = ModelSpec { arch, in_channels: 1, num_classes: 10, input_size: (28, 28), mean: vec![0.5], std: vec![0.25] };
    tch::manual_seed(0);
    let model = Model::new(spec, Device::Cpu).unwrap();
    let net = ZoNet::new(&model).unwrap();
    let x = Tensor::rand([b, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [b], (Kind::Int64, Device::Cpu));
    for (i, s) in net.slots.iter().enumerate().chain(net.slots.iter().enumerate().take(1)) {
        let k = ((s.numel as f64 * 0.1).ceil() as i64).min(s.numel);
        let coords: Vec<Option<Tensor>> = net.slots.iter().enumerate().map(|(j, _)| (j == i).then(|| Tensor::arange(k, (Kind::Int64, Device::Cpu)))).collect();
        let t = Instant::now();
        let (_, _, _, q) = net.cge(&x, &y, &coords, 5e-3, true);
        let dt = t.elapsed().as_secs_f64();
        println!("{:<22} coords {:>6} queries {:>6} {:>8.3} s  {:>9.0} q/s", s.name, k, q, dt, q as f64 / dt);
    }
}
