"""The report's page: one jinja2 template, CSS inline, no external resource of any kind."""

from __future__ import annotations

import jinja2

_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color: #1f2328; background: #ffffff; margin: 0; }
  main { max-width: 1180px; margin: 0 auto; padding: 1.2em 1.6em 4em; }
  h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
  h2 { font-size: 1.35em; border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2.2em; }
  h3 { font-size: 1.1em; margin-top: 1.6em; }
  .meta { color: #57606a; font-size: 0.9em; }
  nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.5em 1em;
        margin: 1em 0; font-size: 0.92em; }
  nav a { margin-right: 1.1em; color: #0969da; text-decoration: none; }
  .warning { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px;
             padding: 0.7em 1em; margin: 1em 0; }
  .note { color: #57606a; font-size: 0.9em; margin: 0.4em 0 1em; }
  .scroll { overflow-x: auto; }
  table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
  caption { caption-side: top; text-align: left; font-weight: 600; padding: 0.3em 0; }
  th, td { border: 1px solid #d0d7de; padding: 0.28em 0.6em; text-align: right; white-space: nowrap; }
  th { background: #f6f8fa; }
  td.text, th.text { text-align: left; }
  tbody tr:nth-child(even) { background: #fafbfc; }
  figure { margin: 1.2em 0; }
  figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
  figcaption { color: #57606a; font-size: 0.88em; }
  .cams { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
  .cams figure { flex: 1 1 330px; max-width: 560px; }
  .cams figure.wide { flex-basis: 100%; max-width: 100%; }
  pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
  details { margin: 0.4em 0; }
  summary { cursor: pointer; }
  dl.versions { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; }
  dl.versions dt { font-weight: 600; }
  dl.versions dd { margin: 0; }
</style>
</head>
<body>
<main>
{%- macro table(t) %}
<div class="scroll">
{%- set tc = t.text_cols %}
<table id="{{ t.id }}">
  {% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
  <thead><tr>{% for h in t.header %}<th{% if tc[loop.index0] %} class="text"{% endif %}>{{ h }}</th>{% endfor %}</tr></thead>
  <tbody>
  {% for row in t.rows %}<tr>{% for c in row %}<td{% if tc[loop.index0] %} class="text"{% endif %}>{{ c }}</td>{% endfor %}</tr>
  {% endfor %}
  </tbody>
</table>
</div>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
{%- endmacro %}
{%- macro figure(f, cls="", caption=True) %}
<figure{% if cls %} class="{{ cls }}"{% endif %}>
  <img src="{{ f.src }}" alt="{{ f.title }}">
  <figcaption><strong>{{ f.title }}</strong>{% if caption and f.caption %}. {{ f.caption }}{% endif %}</figcaption>
</figure>
{%- endmacro %}
<h1>{{ title }}</h1>
<p class="meta">{{ records|length }} run(s), stage(s) {{ results|map(attribute="name")|join(", ") }};
metrics on the {{ split }} split; generated {{ generated }}.</p>
{% if warnings %}
<div class="warning" id="warnings"><strong>Read these numbers with care.</strong>
<ul>{% for w in warnings %}<li><strong>{{ w.where }}</strong> [{{ w.code }}]: {{ w.message }}</li>{% endfor %}</ul>
</div>
{% endif %}
{% if random %}
<div class="warning" id="random-weights"><strong>Randomly initialised backbones.</strong>
{{ random|length }} of {{ records|length }} run(s) started from random weights, not ImageNet
({{ random|join(", ") }}). Their numbers test the pipeline; they say nothing about the study's
transfer-learning results.</div>
{% endif %}
<nav>
  <a href="#data">Data</a>{% if lungs %}<a href="#lungs">Lungs</a>{% endif %}<a href="#models">Models</a>
  {% for s in results %}<a href="#{{ s.id }}">{{ s.name }}</a>{% endfor %}
  <a href="#visual">Grad-CAM</a>{% if shortcut %}<a href="#shortcut-section">Shortcut benchmark</a>{% endif %}
  {% if sources %}<a href="#sources-section">Cross-source study</a>{% endif %}
  {% if tune is not none %}<a href="#tuning">Tuning</a>{% endif %}<a href="#how">How this was made</a>
</nav>

<section id="data">
<h2>Data</h2>
{% for t in data %}{{ table(t) }}{% else %}<p class="note">The runs record no prepared set.</p>{% endfor %}
{% for d in data_extra %}
{% if d.rejected %}{{ table(d.rejected) }}{% endif %}
<div id="audit-{{ loop.index0 }}">
{% for b in d.audit %}
  {% if b.heading %}<h3>{{ b.heading }}</h3>{% elif b.table %}{{ table(b.table) }}{% else %}<p>{{ b.text }}</p>{% endif %}
{% endfor %}
</div>
{% endfor %}
</section>
{% if lungs %}
<section id="lungs">
<h2>Lung segmentation</h2>
{% for t in lungs.tables %}{{ table(t) }}{% endfor %}
{% for n in lungs.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% for f in lungs.figures %}{{ figure(f) }}{% endfor %}
</section>
{% endif %}

<section id="models-section">
<h2 id="models-heading">Models</h2>
{{ table(models) }}
</section>

{% for s in results %}
<section id="{{ s.id }}">
<h2>{{ s.name }}</h2>
{% for t in s.tables %}{{ table(t) }}{% endfor %}
{% for f in s.figures %}{{ figure(f) }}{% endfor %}
</section>
{% endfor %}

{% if shortcut_split %}
<section id="shortcut-split-section">
<h2>Shortcut markers: test vs shortcut_test</h2>
{{ table(shortcut_split) }}
</section>
{% endif %}

<section id="visual">
<h2>Grad-CAM: where the models look</h2>
<p>The expected focus is the lungs. Heatmaps show the predicted class; cases are chosen from the
predictions (most confident correct, most confident mistakes, borderline), not by hand.</p>
{% if cam_note %}<p class="warning">{{ cam_note }}</p>{% endif %}
<div class="cams">
{% for f in cams %}{{ figure(f, "wide" if f.wide else "", caption=False) }}{% endfor %}
</div>
</section>

{% if shortcut %}
<section id="shortcut-section">
<h2>Shortcut benchmark</h2>
{% for b in shortcut %}
  {% if b.heading %}<h3>{{ b.heading }}</h3>{% elif b.table %}{{ table(b.table) }}{% else %}<p>{{ b.text }}</p>{% endif %}
{% endfor %}
</section>
{% endif %}

{% if sources %}
<section id="sources-section">
<h2>Cross-source study</h2>
<p>Does the model read lungs or hospitals? Each source is held out in turn: accuracy on its
films when it was in training (internal) vs when it was not (external).</p>
{% for t in sources.tables %}{{ table(t) }}{% endfor %}
{% if sources.figure %}{{ figure(sources.figure) }}{% endif %}
{% for n in sources.notes %}<p class="note">{{ n }}</p>{% endfor %}
</section>
{% endif %}

{% if tune is not none %}
<section id="tuning">
<h2>Hyper-parameter tuning</h2>
{% for f in tune %}{{ figure(f) }}{% else %}<p class="note">The tuning folder holds no plots.</p>{% endfor %}
</section>
{% endif %}

<section id="how">
<h2>How this was made</h2>
{% if random %}<p><strong>Weights:</strong> the backbones of {{ random|join(", ") }} were randomly
initialised (no ImageNet weights were used for them).</p>{% else %}<p><strong>Weights:</strong>
every run started from the weights listed below.</p>{% endif %}
{% if phantom %}<p id="phantom-weights"><strong>Phantom bodies:</strong> {{ phantom|join(", ") }}
started from a body trained by <code>cxrguide pretrain</code> on clean synthetic phantoms (no
class-specific markers, its own seed), recorded as <code>phantom:&lt;sha256&gt;</code>: the offline
stand-in for ImageNet, not ImageNet, and no evidence about real chest X-rays.</p>{% endif %}
{{ table(provenance) }}
<h3>Versions</h3>
<dl class="versions">{% for k, v in versions.items() %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
<h3>Configurations</h3>
{% for name, text in configs %}
<details><summary>{{ name }}/config.yaml</summary><pre>{{ text }}</pre></details>
{% endfor %}
</section>
</main>
</body>
</html>
"""

TEMPLATE = jinja2.Environment(autoescape=True).from_string(_PAGE)
