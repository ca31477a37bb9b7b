"""`recipe init`'s logic as the suggestion run uses it (semiclust/recipe_init.fitted_recipe): a budget that allows
few passes over the data gets a warm-up of a tenth of the run instead of half an epoch (which a short budget on a
large pool could not even reach), and the seed and the run's name are the ones given."""
from __future__ import annotations

import pytest

from semiclust.config import init as recipe_init


@pytest.mark.parametrize("epochs, warmup", [(100.0, 0.5), (5.0, 0.5), (2.0, 0.2), (0.3, 0.03)])
def test_the_warm_up_fits_inside_the_run(monkeypatch, epochs, warmup):
    monkeypatch.setattr(recipe_init, "choose_width", lambda *args: (8, [recipe_init.Measured(8, 0.01, epochs)]))
    fitted = recipe_init.fitted_recipe("pool", {"dataset": "synthetic", "clusters": 6}, "1m", "swav", name="probe",
                                       seed=3)
    recipe = fitted.recipe
    assert recipe.schedule.warmup_epochs == warmup
    assert recipe.seed == 3 and recipe.name == "probe" and recipe.method.name == "swav"
    assert recipe.data.dataset == "pool" and recipe.data.labels.fraction == 1.0
