//! Small, dependency-free PNG charts (scatter and line plots with axes, ticks and labels) for
//! run reports: e.g. an unlearning method's gap vs its run time, or accuracy vs eps.

use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

type Rgb = [u8; 3];

/// Colours cycled over series.
pub const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// A raster image.
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    /// A white canvas of `width` x `height` pixels.
    pub fn new(width: usize, height: usize) -> Self {
        Canvas {
            width,
            height,
            px: vec![[255, 255, 255]; width * height],
        }
    }

    /// Colours the pixel at (x, y); coordinates outside the canvas are ignored.
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.px[y as usize * self.width + x as usize] = c;
        }
    }

    /// The colour of the pixel at (x, y), which must lie on the canvas.
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        self.px[y * self.width + x]
    }

    /// Draws a one-pixel line from (x0, y0) to (x1, y1) (Bresenham), clipped to the canvas.
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Fills a disc of radius `r` pixels centred at (cx, cy).
    pub fn disc(&mut self, cx: i64, cy: i64, r: i64, c: Rgb) {
        for y in -r..=r {
            for x in -r..=r {
                if x * x + y * y <= r * r {
                    self.set(cx + x, cy + y, c);
                }
            }
        }
    }

    /// Draws `text` with the built-in 5x7 font at `scale`, top-left at (x, y).
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb) {
        let mut cx = x;
        for ch in text.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        for sy in 0..scale {
                            for sx in 0..scale {
                                self.set(cx + col * scale + sx, y + row as i64 * scale + sy, c);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    /// Draws `text` rotated 90 degrees counter-clockwise (for y-axis labels), bottom-left at (x, y).
    pub fn text_vertical(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb) {
        let mut cy = y;
        for ch in text.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        for sy in 0..scale {
                            for sx in 0..scale {
                                self.set(x + row as i64 * scale + sx, cy - col * scale - sy, c);
                            }
                        }
                    }
                }
            }
            cy -= 6 * scale;
        }
    }

    /// Encodes as an 8-bit RGB PNG.
    pub fn to_png(&self) -> Vec<u8> {
        use std::io::Write;
        let mut raw = Vec::with_capacity(self.height * (1 + 3 * self.width));
        for y in 0..self.height {
            raw.push(0u8);
            for x in 0..self.width {
                raw.extend_from_slice(&self.get(x, y));
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).expect("in-memory write");
        let idat = z.finish().expect("in-memory write");
        let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// One labelled point of a scatter plot.
#[derive(Clone, Debug)]
pub struct Point {
    /// Horizontal position, in data units.
    pub x: f64,
    /// Vertical position, in data units.
    pub y: f64,
    /// Text drawn to the right of the marker.
    pub label: String,
}

/// A chart: labelled points (scatter) and/or polylines.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    /// Title drawn above the plot area.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label along the y axis.
    pub y_label: String,
    /// Logarithmic (base 10) x axis; every x must then be positive.
    pub log_x: bool,
    /// Labelled scatter points, coloured in turn from [`PALETTE`].
    pub points: Vec<Point>,
    /// Named polylines (drawn with markers).
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// "Nice" tick positions covering [lo, hi].
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = Vec::new();
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.abs() < 0.01 {
        format!("{v:.0e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Chart {
    /// Renders to a canvas of the given size.
    pub fn render(&self, width: usize, height: usize) -> Result<Canvas> {
        let mut xs: Vec<f64> = self.points.iter().map(|p| p.x).collect();
        let mut ys: Vec<f64> = self.points.iter().map(|p| p.y).collect();
        for (_, l) in &self.lines {
            xs.extend(l.iter().map(|p| p.0));
            ys.extend(l.iter().map(|p| p.1));
        }
        if xs.is_empty() {
            return Err(Error::invalid("plot: no data"));
        }
        if xs.iter().chain(&ys).any(|v| !v.is_finite()) {
            return Err(Error::invalid("plot: non-finite value"));
        }
        if self.log_x && xs.iter().any(|&x| x <= 0.0) {
            return Err(Error::invalid("plot: log x axis needs positive x"));
        }
        let tx = |x: f64| if self.log_x { x.log10() } else { x };
        let (mut x0, mut x1) = minmax(xs.iter().map(|&x| tx(x)));
        let (mut y0, mut y1) = minmax(ys.iter().copied());
        pad_range(&mut x0, &mut x1);
        pad_range(&mut y0, &mut y1);
        let mut c = Canvas::new(width, height);
        let (left, right, top, bottom) = (70i64, 20i64, 40i64, 50i64);
        let (pw, ph) = (width as i64 - left - right, height as i64 - top - bottom);
        let px = |x: f64| left + ((tx(x) - x0) / (x1 - x0) * pw as f64).round() as i64;
        let py = |y: f64| top + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i64;
        let grid = [230, 230, 230];
        let ink = [40, 40, 40];
        // Ticks and grid.
        let xt: Vec<f64> = if self.log_x {
            ticks(x0, x1, 6)
                .into_iter()
                .filter(|t| t.fract() == 0.0)
                .map(|t| 10f64.powf(t))
                .collect()
        } else {
            ticks(x0, x1, 6)
        };
        for t in &xt {
            let sx = px(*t);
            c.line(sx, top, sx, top + ph, grid);
            let s = fmt_tick(*t);
            c.text(sx - 3 * s.len() as i64, top + ph + 6, &s, 1, ink);
        }
        for t in ticks(y0, y1, 6) {
            let sy = py(t);
            c.line(left, sy, left + pw, sy, grid);
            let s = fmt_tick(t);
            c.text(left - 8 - 6 * s.len() as i64, sy - 3, &s, 1, ink);
        }
        c.line(left, top + ph, left + pw, top + ph, ink);
        c.line(left, top, left, top + ph, ink);
        c.text(left, 12, &self.title, 2, ink);
        c.text(
            left + pw / 2 - 3 * self.x_label.len() as i64,
            top + ph + 24,
            &self.x_label,
            1,
            ink,
        );
        c.text_vertical(
            8,
            top + ph / 2 + 3 * self.y_label.len() as i64,
            &self.y_label,
            1,
            ink,
        );
        for (i, (name, pts)) in self.lines.iter().enumerate() {
            let col = PALETTE[i % PALETTE.len()];
            for w in pts.windows(2) {
                c.line(px(w[0].0), py(w[0].1), px(w[1].0), py(w[1].1), col);
            }
            for p in pts {
                c.disc(px(p.0), py(p.1), 3, col);
            }
            c.text(left + pw - 120, top + 8 + 12 * i as i64, name, 1, col);
        }
        for (i, p) in self.points.iter().enumerate() {
            let col = PALETTE[i % PALETTE.len()];
            let (sx, sy) = (px(p.x), py(p.y));
            c.disc(sx, sy, 4, col);
            c.text(sx + 7, sy - 3, &p.label, 1, col);
        }
        Ok(c)
    }

    /// Renders and writes a PNG atomically.
    pub fn write_png(&self, path: &Path, width: usize, height: usize) -> Result<()> {
        let c = self.render(width, height)?;
        atomic_write(path, &c.to_png())
    }
}

fn minmax(it: impl Iterator<Item = f64>) -> (f64, f64) {
    it.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    })
}

fn pad_range(lo: &mut f64, hi: &mut f64) {
    let span = *hi - *lo;
    let pad = if span > 0.0 {
        span * 0.08
    } else {
        lo.abs().max(1.0) * 0.1
    };
    *lo -= pad;
    *hi += pad;
}

/// 5x7 glyphs (rows top to bottom, 5 low bits per row). Unknown characters draw as a box.
fn glyph(ch: char) -> [u8; 7] {
    let c = ch.to_ascii_uppercase();
    match c {
        ' ' => [0, 0, 0, 0, 0, 0, 0],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '<' => [2, 4, 8, 16, 8, 4, 2],
        '>' => [8, 4, 2, 1, 2, 4, 8],
        '|' => [4, 4, 4, 4, 4, 4, 4],
        '[' => [14, 8, 8, 8, 8, 8, 14],
        ']' => [14, 2, 2, 2, 2, 2, 14],
        '#' => [10, 10, 31, 10, 31, 10, 10],
        '*' => [0, 4, 21, 14, 21, 4, 0],
        '\'' => [4, 4, 8, 0, 0, 0, 0],
        _ => [31, 17, 17, 17, 17, 17, 31],
    }
}

/// Writes a PNG grid of grey or colour images `rows` `[R][N, C, H, W]` in [0, 1], one row per
/// entry, `scale` screen pixels per image pixel, 2-pixel gaps.
pub fn write_grid(path: &Path, rows: &[Tensor], scale: usize) -> Result<()> {
    if rows.is_empty() {
        return Err(Error::invalid("sample grid: no rows"));
    }
    let sz = rows[0].size();
    let (c, h, w) = (sz[1], sz[2] as usize, sz[3] as usize);
    let cols = rows.iter().map(|r| r.size()[0] as usize).max().unwrap_or(0);
    let gap = 2;
    let cw = cols * (w * scale + gap) + gap;
    let ch = rows.len() * (h * scale + gap) + gap;
    let mut canvas = Canvas::new(cw, ch);
    for (ri, r) in rows.iter().enumerate() {
        let r = (r
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .clamp(0.0, 1.0)
            * 255.0)
            .round();
        let v: Vec<f32> = Vec::try_from(r.flatten(0, -1))?;
        let n = r.size()[0] as usize;
        for k in 0..n {
            for y in 0..h {
                for x in 0..w {
                    let px = |ci: usize| v[((k * c as usize + ci) * h + y) * w + x] as u8;
                    let rgb = if c == 3 {
                        [px(0), px(1), px(2)]
                    } else {
                        [px(0); 3]
                    };
                    for dy in 0..scale {
                        for dx in 0..scale {
                            canvas.set(
                                (gap + k * (w * scale + gap) + x * scale + dx) as i64,
                                (gap + ri * (h * scale + gap) + y * scale + dy) as i64,
                                rgb,
                            );
                        }
                    }
                }
            }
        }
    }
    atomic_write(path, &canvas.to_png())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.13, 0.91, 4);
        assert!(
            t.first().unwrap() >= &0.13 && t.last().unwrap() <= &0.91,
            "{t:?}"
        );
    }

    #[test]
    fn png_is_well_formed() {
        let mut c = Canvas::new(4, 3);
        c.set(1, 1, [255, 0, 0]);
        let png = c.to_png();
        assert_eq!(&png[..8], &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 4);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 3);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // Decompress IDAT and check the red pixel.
        let len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let mut d = flate2::read::ZlibDecoder::new(&png[41..41 + len]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
        assert_eq!(raw.len(), 3 * (1 + 12));
        assert_eq!(&raw[13 + 1 + 3..13 + 1 + 6], &[255, 0, 0]);
    }

    #[test]
    fn chart_draws_points_and_rejects_nan() {
        let mut ch = Chart {
            title: "gap vs time".into(),
            x_label: "seconds".into(),
            y_label: "gap".into(),
            log_x: true,
            ..Default::default()
        };
        ch.points.push(Point {
            x: 1.0,
            y: 2.0,
            label: "ft".into(),
        });
        ch.points.push(Point {
            x: 100.0,
            y: 0.5,
            label: "retrain".into(),
        });
        let c = ch.render(400, 300).unwrap();
        let coloured = (0..c.height)
            .flat_map(|y| (0..c.width).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == PALETTE[0])
            .count();
        assert!(coloured > 20);
        ch.points.push(Point {
            x: f64::NAN,
            y: 0.0,
            label: "x".into(),
        });
        assert!(ch.render(400, 300).is_err());
    }
}
