"""Published test numbers (full ranking, leave-one-out) that the benchmarks compare against.

Keys: (dataset, model) -> {source: {metric: value}}, metrics hr@10, hr@20, ndcg@10, ndcg@20 (HR = Recall with one
target). Sources: DIF-SR Table 2, COMIF Table 3 (d = 128; COMIF with position + brand), ASIF Table 2, as listed
in docs/models.md#published.
"""

from __future__ import annotations


def _row(hr10: float, hr20: float, ndcg10: float, ndcg20: float) -> dict[str, float]:
    return {"hr@10": hr10, "hr@20": hr20, "ndcg@10": ndcg10, "ndcg@20": ndcg20}


PUBLISHED: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    ("amazon-beauty", "sasrec"): {
        "ASIF paper": _row(0.0861, 0.1225, 0.0424, 0.0516),
        "COMIF paper": _row(0.0859, 0.1222, 0.0420, 0.0512),
        "DIF-SR paper": _row(0.0828, 0.1197, 0.0371, 0.0464),
    },
    ("amazon-beauty", "sasrec_f"): {
        "COMIF paper": _row(0.0797, 0.1096, 0.0480, 0.0555),
        "ASIF paper": _row(0.0776, 0.1082, 0.0447, 0.0540),
        "DIF-SR paper": _row(0.0719, 0.1013, 0.0414, 0.0488),
    },
    ("amazon-beauty", "fdsa"): {"ASIF paper": _row(0.0839, 0.1209, 0.0439, 0.0532)},
    ("amazon-beauty", "nova"): {
        "ASIF paper": _row(0.0866, 0.1240, 0.0441, 0.0535),
        "COMIF paper": _row(0.0872, 0.1240, 0.0435, 0.0527),
        "DIF-SR paper": _row(0.0887, 0.1237, 0.0439, 0.0527),
    },
    ("amazon-beauty", "bert4rec"): {
        "ASIF paper": _row(0.0542, 0.0793, 0.0315, 0.0378),
        "DIF-SR paper": _row(0.0529, 0.0815, 0.0237, 0.0309),
        "COMIF paper": _row(0.0501, 0.0763, 0.0264, 0.0330),
    },
    ("amazon-beauty", "difsr"): {
        "DIF-SR paper": _row(0.0908, 0.1284, 0.0446, 0.0541),
        "COMIF paper": _row(0.0876, 0.1256, 0.0431, 0.0526),
        "ASIF paper": _row(0.0871, 0.1234, 0.0434, 0.0526),
    },
    ("amazon-beauty", "asif"): {"ASIF paper": _row(0.0922, 0.1322, 0.0453, 0.0554)},
    ("amazon-beauty", "comif"): {"COMIF paper": _row(0.0979, 0.1449, 0.0474, 0.0592)},
    ("amazon-sports", "sasrec"): {
        "DIF-SR paper": _row(0.0526, 0.0773, 0.0233, 0.0295),
        "COMIF paper": _row(0.0507, 0.0732, 0.0238, 0.0294),
    },
    ("amazon-sports", "sasrec_f"): {
        "DIF-SR paper": _row(0.0435, 0.0640, 0.0235, 0.0286),
        "COMIF paper": _row(0.0426, 0.0616, 0.0250, 0.0298),
    },
    ("amazon-sports", "nova"): {
        "DIF-SR paper": _row(0.0534, 0.0759, 0.0250, 0.0307),
        "COMIF paper": _row(0.0501, 0.0744, 0.0234, 0.0295),
    },
    ("amazon-sports", "bert4rec"): {
        "DIF-SR paper": _row(0.0295, 0.0465, 0.0130, 0.0173),
        "COMIF paper": _row(0.0217, 0.0379, 0.0108, 0.0149),
    },
    ("amazon-sports", "difsr"): {
        "DIF-SR paper": _row(0.0556, 0.0800, 0.0264, 0.0325),
        "COMIF paper": _row(0.0521, 0.0766, 0.0242, 0.0304),
    },
    ("amazon-sports", "comif"): {"COMIF paper": _row(0.0573, 0.0847, 0.0268, 0.0337)},
}


def best_published(dataset: str, model: str, metric: str = "ndcg@20") -> tuple[str, dict[str, float]] | None:
    """The published row with the highest `metric` for a dataset and model, as `(source, row)`; `None` if none."""
    rows = PUBLISHED.get((dataset, model))
    if not rows:
        return None
    source = max(rows, key=lambda name: rows[name][metric])
    return source, rows[source]
