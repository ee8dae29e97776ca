//! Datasets from image folders, laid out like torchvision's `ImageFolder`:
//! `root/<class>/<file>.png|jpg|jpeg`, one subfolder per class, labels given by the sorted
//! class names. A root holding a `train/` folder (and optionally `test/` or `val/`) next to
//! nothing else is read as a split layout, each split holding the class folders.
//!
//! Images are decoded from their content (PNG or JPEG). Every image must have the size and
//! channel count of the first one: grayscale (with or without alpha) gives one channel, RGB or
//! RGBA three; an alpha channel is dropped (not composited). 8-bit pixels are scaled by 1/255,
//! 16-bit ones by 1/65535. Files with other extensions are skipped and counted; an empty class
//! folder is an error naming the class.

use crate::dataset::Dataset;
use image::{ColorType, DynamicImage, ImageDecoder, ImageReader};
use rustworthy_core::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// File extensions read as images (compared without regard to case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Folder nesting below a class folder beyond which reading stops (guards against link loops).
const MAX_DEPTH: usize = 16;

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`].
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Sorted names of the subfolders of `dir`; errors name a folder whose name is not UTF-8.
fn subfolders(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        if p.is_dir() {
            let name = entry.file_name().into_string().map_err(|n| {
                Error::corrupt(
                    dir,
                    format!("folder name {n:?} is not valid UTF-8; rename it"),
                )
            })?;
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The image files under one class folder (recursively, sorted like `os.walk` + `sorted`),
/// and the files skipped for their extension.
fn class_files(
    dir: &Path,
    depth: usize,
    images: &mut Vec<PathBuf>,
    skipped: &mut Vec<PathBuf>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::corrupt(
            dir,
            format!("folders nest more than {MAX_DEPTH} levels deep (a link loop?)"),
        ));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    entries.sort();
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|p| p.is_dir());
    for f in files {
        if is_image_file(&f) {
            images.push(f);
        } else {
            skipped.push(f);
        }
    }
    for d in dirs {
        class_files(&d, depth + 1, images, skipped)?;
    }
    Ok(())
}

/// Whether a JPEG stream ends its last scan with an end-of-image marker (`FF D9`). JPEG
/// decoders fill in a truncated scan silently; inside entropy-coded data `FF` is always followed
/// by `00` or a restart marker, so a missing marker after the last start-of-scan (`FF DA`) means
/// the file was cut.
fn jpeg_complete(data: &[u8]) -> bool {
    let last = |m: u8| data.windows(2).rposition(|w| w == [0xFF, m]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        (None, _) => true, // no scan: the decoder reports the error
        (Some(_), None) => false,
    }
}

/// Whether a PNG stream holds a complete `IEND` chunk (type and checksum). The decoder stops
/// at `IEND` without reading its checksum, so a file cut there would otherwise pass.
fn png_complete(data: &[u8]) -> bool {
    data.windows(4)
        .rposition(|w| w == b"IEND")
        .is_some_and(|pos| data.len() >= pos + 8)
}

/// The image layout all files of a dataset share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    width: u32,
    height: u32,
    channels: usize,
}

impl Layout {
    fn describe(&self) -> String {
        let kind = if self.channels == 1 {
            "grayscale (1 channel)"
        } else {
            "color (3 channels)"
        };
        format!("{}x{} (width x height) {kind}", self.width, self.height)
    }
}

fn channels_of(color: ColorType) -> Option<usize> {
    match color {
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16 => Some(1),
        ColorType::Rgb8
        | ColorType::Rgba8
        | ColorType::Rgb16
        | ColorType::Rgba16
        | ColorType::Rgb32F
        | ColorType::Rgba32F => Some(3),
        _ => None,
    }
}

/// Pixels gathered so far: 8-bit while every image is 8-bit, float once any is not.
enum Pixels {
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
}

/// The largest image side a dataset image may have (per image, `MAX_SIDE` squared pixels).
const MAX_SIDE: u64 = 8192;
const MAX_PIXELS: u64 = MAX_SIDE * MAX_SIDE;

/// Decodes one image, checks it against `reference` (the first image's layout and file), and
/// appends its pixels, channel-major, to `out`.
fn decode_into(
    path: &Path,
    reference: &mut Option<(Layout, PathBuf)>,
    out: &mut Pixels,
) -> Result<()> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let reader = ImageReader::new(std::io::Cursor::new(&data[..]))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    match reader.format() {
        None => {
            return Err(Error::corrupt(
                path,
                "not a PNG or JPEG image (unrecognized content)",
            ))
        }
        Some(image::ImageFormat::Jpeg) if !jpeg_complete(&data) => {
            return Err(Error::corrupt(
                path,
                "truncated JPEG: no end-of-image marker after the last scan",
            ))
        }
        Some(image::ImageFormat::Png) if !png_complete(&data) => {
            return Err(Error::corrupt(
                path,
                "truncated PNG: the final IEND chunk is missing or cut",
            ))
        }
        Some(_) => {}
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| Error::corrupt(path, format!("unreadable image: {e}")))?;
    let (width, height) = decoder.dimensions();
    // The header's size is checked before anything that size is allocated.
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Error::corrupt(
            path,
            format!(
                "the image claims {width}x{height} pixels, more than the {MAX_SIDE}x{MAX_SIDE} \
                 an image of a dataset may have (a damaged header?)"
            ),
        ));
    }
    let color = decoder.color_type();
    let channels = channels_of(color)
        .ok_or_else(|| Error::corrupt(path, format!("unsupported pixel format {color:?}")))?;
    let layout = Layout {
        width,
        height,
        channels,
    };
    match reference {
        Some((r, first)) if *r != layout => {
            let mut what = Vec::new();
            if (r.width, r.height) != (width, height) {
                what.push("size");
            }
            if r.channels != channels {
                what.push("channel count");
            }
            return Err(Error::corrupt(
                path,
                format!(
                    "image is {} but {} is {}: all images must share size and channel count ({} differs)",
                    layout.describe(),
                    first.display(),
                    r.describe(),
                    what.join(" and ")
                ),
            ));
        }
        Some(_) => {}
        None => *reference = Some((layout, path.to_path_buf())),
    }
    let img = DynamicImage::from_decoder(decoder).map_err(|e| {
        Error::corrupt(
            path,
            format!("unreadable image (corrupt or truncated?): {e}"),
        )
    })?;
    let eight_bit = matches!(
        color,
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8
    );
    let plane = width as usize * height as usize;
    if !eight_bit {
        if let Pixels::Bytes(b) = out {
            *out = Pixels::Floats(b.iter().map(|&v| v as f32 / 255.0).collect());
        }
    }
    match out {
        Pixels::Bytes(bytes) => {
            let px = if channels == 1 {
                img.to_luma8().into_raw()
            } else {
                img.to_rgb8().into_raw()
            };
            for ch in 0..channels {
                bytes.extend((0..plane).map(|i| px[i * channels + ch]));
            }
        }
        Pixels::Floats(floats) => {
            let px = if channels == 1 {
                img.to_luma32f().into_raw()
            } else {
                img.to_rgb32f().into_raw()
            };
            for ch in 0..channels {
                floats.extend((0..plane).map(|i| px[i * channels + ch].clamp(0.0, 1.0)));
            }
        }
    }
    Ok(())
}

/// One split read from class folders.
struct FolderSplit {
    images: Tensor,
    labels: Vec<i64>,
    skipped: Vec<PathBuf>,
}

/// Reads the class folders `classes` of `dir`, each with its label.
fn read_split(dir: &Path, classes: &[(String, i64)]) -> Result<FolderSplit> {
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    let mut skipped = Vec::new();
    for (class, label) in classes {
        let cdir = dir.join(class);
        let mut imgs = Vec::new();
        class_files(&cdir, 0, &mut imgs, &mut skipped)?;
        if imgs.is_empty() {
            return Err(Error::corrupt(
                &cdir,
                format!(
                    "class folder `{class}` holds no image ({} files)",
                    IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
                ),
            ));
        }
        files.extend(imgs.into_iter().map(|p| (p, *label)));
    }
    let mut reference = None;
    let mut pixels = Pixels::Bytes(Vec::new());
    for (p, _) in &files {
        decode_into(p, &mut reference, &mut pixels)?;
    }
    let (layout, _) = reference.expect("every class folder holds an image");
    let dims = [
        files.len() as i64,
        layout.channels as i64,
        layout.height as i64,
        layout.width as i64,
    ];
    let images = match pixels {
        Pixels::Bytes(b) => {
            Tensor::f_from_data_size(&b, &dims, Kind::Uint8)?.to_kind(Kind::Float) / 255.0
        }
        Pixels::Floats(f) => Tensor::f_from_slice(&f)?.f_view(dims)?,
    };
    Ok(FolderSplit {
        images,
        labels: files.iter().map(|(_, l)| *l).collect(),
        skipped,
    })
}

/// What reading an image folder found, besides the datasets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderReport {
    /// Class names, sorted (the label of a class is its position).
    pub classes: Vec<String>,
    /// Files skipped because their extension is not one of [`IMAGE_EXTENSIONS`].
    pub skipped: Vec<PathBuf>,
    /// The folder the training set came from.
    pub train_dir: PathBuf,
    /// The folder the test set came from, if any.
    pub test_dir: Option<PathBuf>,
    /// Human-readable remarks (skipped files, an unused `val/`, classes the test split lacks).
    pub notes: Vec<String>,
}

/// The split folders of `root`: `(train, test)` when `root` holds a `train/` folder and no
/// other folder than `test/` and `val/`, else `(root, None)`. With both `test/` and `val/`,
/// `test/` is the test split.
pub fn split_dirs(root: &Path) -> Result<(PathBuf, Option<PathBuf>, Vec<String>)> {
    let subs = subfolders(root)?;
    let is_split = subs.iter().any(|s| s == "train")
        && subs
            .iter()
            .all(|s| matches!(s.as_str(), "train" | "test" | "val"));
    if !is_split {
        return Ok((root.to_path_buf(), None, vec![]));
    }
    let has = |n: &str| subs.iter().any(|s| s == n);
    let mut notes = Vec::new();
    let test = if has("test") {
        if has("val") {
            notes.push(format!(
                "{}: val/ is not used (test/ is the test split)",
                root.display()
            ));
        }
        Some(root.join("test"))
    } else if has("val") {
        Some(root.join("val"))
    } else {
        None
    };
    Ok((root.join("train"), test, notes))
}

/// Loads an image folder as (train, test): see the module docs for the layout. `name` prefixes
/// the dataset names (`<name>/train`, `<name>/test`). With a split layout, the test split's
/// class folders must be among the training split's (labels follow the training classes); a
/// class missing from the test split is noted in the report.
pub fn load_image_folder(
    root: &Path,
    name: &str,
) -> Result<(Dataset, Option<Dataset>, FolderReport)> {
    if !root.is_dir() {
        return Err(Error::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    let (train_dir, test_dir, mut notes) = split_dirs(root)?;
    let classes = subfolders(&train_dir)?;
    if classes.is_empty() {
        return Err(Error::corrupt(
            &train_dir,
            "no class folder: expected one subfolder per class holding .png/.jpg/.jpeg images",
        ));
    }
    let labelled: Vec<(String, i64)> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i as i64))
        .collect();
    let mut train = read_split(&train_dir, &labelled)?;
    // Files directly in the split folder (not in a class folder) are skipped too.
    let mut skipped: Vec<PathBuf> = loose_files(&train_dir)?;
    skipped.append(&mut train.skipped);
    let train_ds = Dataset::new(
        format!("{name}/train"),
        train.images,
        Tensor::f_from_slice(&train.labels)?,
        classes.len(),
        classes.clone(),
    )?;
    let test_ds = match &test_dir {
        None => None,
        Some(tdir) => {
            let tclasses = subfolders(tdir)?;
            if let Some(extra) = tclasses.iter().find(|c| !classes.contains(c)) {
                return Err(Error::corrupt(
                    tdir.join(extra),
                    format!(
                        "test class folder `{extra}` has no training counterpart in {} (training classes: {})",
                        train_dir.display(),
                        classes.join(", ")
                    ),
                ));
            }
            if tclasses.is_empty() {
                return Err(Error::corrupt(tdir, "no class folder in the test split"));
            }
            let missing: Vec<&String> = classes.iter().filter(|c| !tclasses.contains(c)).collect();
            if !missing.is_empty() {
                notes.push(format!(
                    "{}: no folder for class(es) {} in the test split",
                    tdir.display(),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let tl: Vec<(String, i64)> = labelled
                .iter()
                .filter(|(c, _)| tclasses.contains(c))
                .cloned()
                .collect();
            let mut test = read_split(tdir, &tl)?;
            skipped.extend(loose_files(tdir)?);
            skipped.append(&mut test.skipped);
            let ds = Dataset::new(
                format!("{name}/test"),
                test.images,
                Tensor::f_from_slice(&test.labels)?,
                classes.len(),
                classes.clone(),
            )?;
            if ds.image_shape() != train_ds.image_shape() {
                let (c, h, w) = ds.image_shape();
                let (tc, th, tw) = train_ds.image_shape();
                return Err(Error::corrupt(
                    tdir,
                    format!(
                        "test images are {w}x{h} with {c} channel(s) but training images are {tw}x{th} with {tc} channel(s)"
                    ),
                ));
            }
            Some(ds)
        }
    };
    if !skipped.is_empty() {
        let shown: Vec<String> = skipped
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        let more = if skipped.len() > 5 { ", ..." } else { "" };
        notes.push(format!(
            "skipped {} file(s) that are not .png/.jpg/.jpeg: {}{more}",
            skipped.len(),
            shown.join(", ")
        ));
    }
    Ok((
        train_ds,
        test_ds,
        FolderReport {
            classes,
            skipped,
            train_dir,
            test_dir,
            notes,
        },
    ))
}

/// Plain files directly in a split folder (outside every class folder).
fn loose_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        assert!(is_image_file(Path::new("a/b.PNG")));
        assert!(is_image_file(Path::new("b.jpeg")));
        assert!(is_image_file(Path::new("b.Jpg")));
        assert!(!is_image_file(Path::new("b.gif")));
        assert!(!is_image_file(Path::new("png")));
    }

    #[test]
    fn split_layout_detection() {
        let d = tempfile::tempdir().unwrap();
        for s in ["train", "test", "val"] {
            std::fs::create_dir(d.path().join(s)).unwrap();
        }
        let (tr, te, notes) = split_dirs(d.path()).unwrap();
        assert_eq!(tr, d.path().join("train"));
        assert_eq!(te, Some(d.path().join("test")));
        assert!(notes[0].contains("val/ is not used"), "{notes:?}");
        // Another folder next to train/ makes train/ a class.
        std::fs::create_dir(d.path().join("cat")).unwrap();
        let (tr, te, _) = split_dirs(d.path()).unwrap();
        assert_eq!((tr, te), (d.path().to_path_buf(), None));
    }
}
