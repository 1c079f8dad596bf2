"""Unit tests of the building blocks: parameterisations, priors, transforms, objectives, jobs."""

from __future__ import annotations

import pytest
import torch

from tlresearch.core.config import from_node, parse_amount
from tlresearch.core.errors import ConfigError
from tlresearch.imageopt.ideal import IdealSettings
from tlresearch.imageopt.jobs import (
    Job,
    JobDataset,
    build_attack_jobs,
    build_ideal_jobs,
    dedupe_results,
    job_generator,
    job_loader,
)
from tlresearch.imageopt.network import resolve_class, resolve_classes
from tlresearch.imageopt.objectives import class_loss, diversity_penalty, success_margin
from tlresearch.imageopt.param import FourierImage, ParamSettings, PixelImage, decorrelate_colors, make_param
from tlresearch.imageopt.regularizers import Regularizers, blur_penalty, gaussian_blur, total_variation
from tlresearch.imageopt.transforms import RobustnessTransforms


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- parameterisations


def test_pixel_image_clamps_into_unit_range_after_a_step():
    param = PixelImage(torch.full((1, 3, 8, 8), 0.9))
    optimizer = torch.optim.SGD(param.parameters(), lr=1.0)
    (-param().sum()).backward()
    optimizer.step()
    param.after_step()
    assert param().max() == 1.0 and param().min() >= 0.0


def test_fourier_image_is_a_differentiable_image_in_unit_range():
    param = FourierImage(2, 16, gen(), init_std=0.5)
    image = param()
    assert image.shape == (2, 3, 16, 16)
    assert 0 < image.min() and image.max() < 1
    image[:, 0].mean().backward()
    assert param.spectrum.grad is not None and param.spectrum.grad.abs().sum() > 0


def test_fourier_image_of_zero_spectrum_is_mid_grey():
    param = FourierImage(1, 8, gen(), init_std=0.0)
    assert torch.allclose(param(), torch.full((1, 3, 8, 8), 0.5))


def test_colour_decorrelation_mixes_channels_linearly():
    x = torch.zeros(1, 3, 2, 2)
    x[:, 0] = 1.0
    out = decorrelate_colors(x)
    assert out[0, :, 0, 0].abs().min() > 0  # one decorrelated channel feeds every RGB channel
    assert torch.allclose(decorrelate_colors(2 * x), 2 * out)


def test_make_param_follows_the_settings():
    assert isinstance(make_param(ParamSettings("fft"), 1, 8, gen()), FourierImage)
    pixels = make_param(ParamSettings("pixel", init="uniform"), 2, 8, gen())
    assert isinstance(pixels, PixelImage) and pixels().shape == (2, 3, 8, 8)


# ----------------------------------------------------------------------------- regularisers


def test_total_variation_sum_matches_the_definition_and_mean_averages():
    image = torch.zeros(1, 1, 2, 3)
    image[..., 0, 0] = 1.0  # differs from its right and its lower neighbour: TV = 2
    assert total_variation(image, "sum").item() == pytest.approx(2.0)
    # mean: each direction's differences averaged (vertical 1/3, horizontal 1/4)
    assert total_variation(image, "mean").item() == pytest.approx(1 / 3 + 1 / 4)
    assert total_variation(torch.full((2, 3, 5, 5), 0.3)).tolist() == [0.0, 0.0]


def test_blur_keeps_size_and_constant_images_and_smooths_noise():
    noise = torch.rand(1, 3, 16, 16, generator=gen())
    assert gaussian_blur(noise, 1.0).shape == noise.shape
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 8, 8), 0.4), 1.0), torch.full((1, 3, 8, 8), 0.4))
    assert total_variation(gaussian_blur(noise, 1.0)) < total_variation(noise)
    assert blur_penalty(torch.full((1, 3, 8, 8), 0.4)).item() == pytest.approx(0.0)


def test_regularizers_switch_on_at_their_start_fraction():
    regs = Regularizers(tv=1.0, start=0.5)
    assert not regs.active_at(4, 10) and regs.active_at(5, 10)
    assert not Regularizers().active_at(9, 10)
    image = torch.rand(2, 3, 8, 8, generator=gen())
    combined = Regularizers(tv=1.0, l1=1.0, l2=1.0, blur=1.0, reduction="sum")(image, 0.5)
    assert combined.shape == (2,) and (combined > total_variation(image, "sum")).all()


# ----------------------------------------------------------------------------- transforms


def test_robustness_transforms_are_random_reproducible_and_off_by_default():
    images = torch.rand(2, 3, 16, 16, generator=gen())
    assert RobustnessTransforms()(images, gen()) is images
    transforms = RobustnessTransforms(enabled=True, pad=4)
    first, again = transforms(images, gen(1)), transforms(images, gen(1))
    assert first.shape == (2, 3, 24, 24)
    assert torch.equal(first, again)
    assert not torch.equal(first, transforms(images, gen(2)))


def test_identity_transform_returns_the_padded_image():
    transforms = RobustnessTransforms(enabled=True, pad=2, jitter=0, scale=(1.0, 1.0), rotate=0.0)
    images = torch.rand(1, 3, 8, 8, generator=gen())
    out = transforms(images, gen())
    assert torch.allclose(out[..., 2:-2, 2:-2], images, atol=1e-5)


# ----------------------------------------------------------------------------- objectives


def test_objectives_and_margins():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    classes = torch.tensor([0, 2])
    assert class_loss(logits, classes, "logit").tolist() == [-2.0, -1.0]
    assert torch.allclose(class_loss(logits, classes, "log_softmax"), class_loss(logits, classes, "cross_entropy"))
    labels, untargeted = torch.tensor([0, 1]), torch.tensor([-1, -1])
    assert success_margin(logits, labels, untargeted).tolist() == [-1.0, -2.0]  # both still correct
    assert success_margin(logits, labels, torch.tensor([1, 2])).tolist() == [-1.0, -2.0]
    assert success_margin(logits, labels, torch.tensor([0, 1])).tolist() == [1.0, 2.0]


def test_diversity_penalty_is_high_for_identical_features():
    same = torch.ones(3, 4)
    assert diversity_penalty(same).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert diversity_penalty(torch.eye(3)).tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert diversity_penalty(torch.ones(1, 4)).tolist() == [0.0]


# ----------------------------------------------------------------------------- class names


def test_classes_resolve_by_name_index_and_spelling_variants():
    names = ["tabby", "tiger cat", "Persian cat", "zebra"]
    assert resolve_class("zebra", names, "target") == 3
    assert resolve_class("Persian_cat", names, "target") == 2
    assert resolve_class("TIGER-cat", names, "target") == 1
    assert resolve_class(0, names, "target") == 0 and resolve_class("3", names, "target") == 3
    assert resolve_classes(None, names, "target") == []
    assert resolve_classes("tabby", names, "target") == [0]
    assert resolve_classes(["tabby", 3], names, "target") == [0, 3]


# ----------------------------------------------------------------------------- settings


def test_settings_from_config_nodes_with_fractions():
    assert parse_amount("8/255", "eps") == pytest.approx(8 / 255)
    assert parse_amount(0.5, "eps") == 0.5
    settings = from_node(IdealSettings, {"steps": 3, "regularizers": {"tv": 0.1}, "transforms": {"enabled": True}}, "ideal")
    assert settings.steps == 3 and settings.regularizers.tv == 0.1 and settings.transforms.enabled
    with pytest.raises(ConfigError, match=r"ideal\.regularizers\.tvv.*Did you mean: tv"):
        from_node(IdealSettings, {"regularizers": {"tvv": 0.1}}, "ideal")
    with pytest.raises(ConfigError, match=r"ideal\.optimizer\.name='adamw'.*\['sgd', 'adam'\]"):
        from_node(IdealSettings, {"optimizer": {"name": "adamw"}}, "ideal")


# ----------------------------------------------------------------------------- jobs


def test_ideal_jobs_keep_the_seeds_of_a_target_together():
    jobs = build_ideal_jobs([7, 9], seeds=3, batch_size=2)
    assert [j.job_id for j in jobs] == [0, 1, 2, 3]
    assert [(j.targets, j.seeds) for j in jobs] == [((7, 7), (0, 1)), ((7,), (2,)), ((9, 9), (0, 1)), ((9,), (2,))]


def test_attack_jobs_cover_every_image_and_target_once():
    jobs = build_attack_jobs(5, targets=[1, 2], labels=[0, 0, 3, 3, -1], batch_size=2)
    pairs = [(s, t) for j in jobs for s, t in zip(j.sources, j.targets)]
    assert sorted(pairs) == sorted((s, t) for s in range(5) for t in (1, 2))
    assert jobs[1].labels == (3, 3)
    assert all(t == -1 for j in build_attack_jobs(3, [], [0, 0, 0], 8) for t in j.targets)


def test_job_dataset_items_are_whole_batches():
    sources = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    jobs = build_attack_jobs(4, [1], [0, 0, 0, 0], batch_size=3)
    loader = job_loader(JobDataset(jobs, sources))
    items = list(loader)
    assert [i["job_id"] for i in items] == [0, 1]
    assert items[0]["sources"].shape == (3, 3, 2, 2) and torch.equal(items[1]["sources"][0], sources[3])


def test_job_generators_depend_on_seed_and_job_only():
    a = torch.rand(3, generator=job_generator(5, 2, "cpu"))
    assert torch.equal(a, torch.rand(3, generator=job_generator(5, 2, "cpu")))
    assert not torch.equal(a, torch.rand(3, generator=job_generator(5, 3, "cpu")))


def test_dedupe_drops_padding_duplicates_and_reports_missing_jobs():
    results = [{"job_id": 1, "v": "a"}, {"job_id": 0, "v": "b"}, {"job_id": 1, "v": "dup"}]
    assert [r["v"] for r in dedupe_results(results, [0, 1])] == ["b", "a"]
    with pytest.raises(RuntimeError, match=r"no result for jobs \[2\]"):
        dedupe_results(results, [0, 1, 2])


def test_job_length():
    assert len(Job(0, (1, 2))) == 2


def test_frozen_classifier_normalises_inside_and_never_trains(tiny_network):
    assert not any(p.requires_grad for p in tiny_network.parameters())
    tiny_network.train()
    assert not any(m.training for m in tiny_network.modules())
    x = torch.rand(2, 3, 16, 16, generator=gen())
    expected = tiny_network.head(tiny_network.features_net((x - 0.5) / 0.25))
    assert torch.allclose(tiny_network(x), expected)
    x.requires_grad_(True)
    tiny_network(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the image


@pytest.mark.parametrize("jobs,world", [(3, 2), (1, 2), (5, 3), (4, 1)])
def test_job_sampler_pads_so_every_rank_works_and_every_job_is_covered(monkeypatch, jobs, world):
    from tlresearch.imageopt.jobs import JobSampler

    dataset = JobDataset(build_ideal_jobs(list(range(jobs)), seeds=1, batch_size=1))
    shards = []
    for rank in range(world):
        monkeypatch.setattr(JobSampler, "world", staticmethod(lambda rank=rank: (world, rank)))
        sampler = JobSampler(dataset)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) >= 1
    assert len({len(s) for s in shards}) == 1  # the same number of jobs on every rank
    flat = [j for s in shards for j in s]
    assert set(flat) == set(range(jobs))
    assert len(flat) - jobs < world  # padding: fewer than one extra job per rank
