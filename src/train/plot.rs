//! The loss curves of a run as a PNG: drawn by `plotters` into a pixel buffer, encoded by
//! `image`. The font is the Hack typeface that `epaint_default_fonts` embeds, so the plot looks
//! the same on every machine, with no system fonts needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const WIDTH: u32 = 800;
const HEIGHT: u32 = 500;
const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
const EVAL_COLOUR: RGBColor = RGBColor(230, 110, 0);

fn register_font_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Cannot fail for the embedded font; a plot without text is still a plot.
        let _ = register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}

/// Draw the training loss as a line and the evaluation loss as a line with square markers
/// (axes, grid, title, legend) and write `path` atomically. `(step, loss)` points with a
/// non-finite loss are left out; empty series still give a valid image with empty axes.
pub fn write_loss_png(
    path: &Path,
    train: &[(u64, f64)],
    eval: &[(u64, f64)],
    title: &str,
) -> Result<()> {
    register_font_once();
    let finite = |s: &[(u64, f64)]| -> Vec<(f64, f64)> {
        s.iter()
            .filter(|(_, l)| l.is_finite())
            .map(|&(x, y)| (x as f64, y))
            .collect()
    };
    let (train, eval) = (finite(train), finite(eval));
    let all = || train.iter().chain(&eval);
    let (x0, x1) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x0, x1) = if x0 <= x1 {
        (x0, x1.max(x0 + 1.0))
    } else {
        (0.0, 1.0)
    };
    let (y0, y1) = if y0 <= y1 {
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        (y0 - pad, y1 + pad)
    } else {
        (0.0, 1.0)
    };

    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("loss")
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            chart
                .draw_series(LineSeries::new(
                    train.iter().copied(),
                    TRAIN_COLOUR.stroke_width(2),
                ))?
                .label("train loss")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], TRAIN_COLOUR));
            chart
                .draw_series(LineSeries::new(
                    eval.iter().copied(),
                    EVAL_COLOUR.stroke_width(2),
                ))?
                .label("eval loss")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], EVAL_COLOUR));
            chart.draw_series(PointSeries::of_element(
                eval.iter().copied(),
                4,
                EVAL_COLOUR.filled(),
                &|c, s, st| EmptyElement::at(c) + Rectangle::new([(-s, -s), (s, s)], st),
            ))?;
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| anyhow::anyhow!("drawing the loss curves: {e}"))?;
    }
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels)
        .context("internal: the plot buffer has the wrong size")?;
    anymal_util::fs::write_atomic_with(path, |tmp| {
        image
            .save_with_format(tmp, image::ImageFormat::Png)
            .map_err(anyhow::Error::from)
    })
    .with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn colour_count(img: &image::RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn curves_are_drawn_into_a_png_and_empty_series_still_give_one() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("anymal-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let png = dir.join("loss.png");
        let train: Vec<(u64, f64)> = (1..=50).map(|s| (s, 3.0 / s as f64)).collect();
        let eval = [(10, 0.9), (20, f64::NAN), (30, 0.5), (50, 0.4)];
        write_loss_png(&png, &train, &eval, "alignment: runs/x")?;
        let img = image::open(&png)?.to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert!(
            colour_count(&img, TRAIN_COLOUR) > 500,
            "the train curve is drawn"
        );
        assert!(
            colour_count(&img, EVAL_COLOUR) > 100,
            "the eval curve is drawn"
        );
        write_loss_png(&png, &[], &[], "nothing yet")?;
        let img = image::open(&png)?.to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        // Only the legend's sample line is in the train colour.
        assert!(colour_count(&img, TRAIN_COLOUR) < 100);
        assert_eq!(
            std::fs::read_dir(&dir)?.count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
