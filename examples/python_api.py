# %% [markdown]
# # loraclf from Python, notebook style
#
# Run it cell by cell (VS Code / Jupyter read the `# %%` markers) or as a script from the repository root:
# `python examples/python_api.py`. It trains LoRA on the bundled MiniLM with 2,000 SST-2 sentences
# (about a minute on 2 CPU cores), offline.

# %%
import os

import pandas as pd

import loraclf

root = os.environ.get("LORACLF_DATASETS", "../shared/datasets")
train = pd.read_csv(f"{root}/sst2/train.csv").sample(2000, random_state=0)
test = pd.read_csv(f"{root}/sst2/test.csv")  # 872 labelled sentences (GLUE's validation split)
train.head()

# %% Train: any config field is a keyword (epochs -> train.epochs, r -> lora.r, ...)
clf = loraclf.fit(train, test=test, model="minilm", epochs=1, output_dir="runs")
print(clf)
print("run directory:", clf.run.path)  # metrics.json, report.html, predictions/, artifact/

# %% Predict
texts = ["a gripping, funny film", "two hours I will never get back"]
print(clf.predict(texts))
print(pd.DataFrame(clf.predict_proba(texts), columns=clf.labels, index=texts).round(3))

# %% Evaluate on any labelled DataFrame (the columns it was trained on)
metrics = clf.evaluate(test)
print({k: round(metrics[k], 4) for k in ("accuracy", "macro_f1", "ece")})

# %% Save, load back, and (online) share
folder = clf.save_pretrained("runs/sst2-minilm-api")
again = loraclf.from_pretrained(folder)
assert again.predict(texts) == clf.predict(texts)
# again.push_to_hub("your-name/sst2-minilm")   # needs network and `huggingface-cli login`
