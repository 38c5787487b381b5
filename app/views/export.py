"""Export: the laws fitted on the other pages as JSON, their tables as CSV or Parquet, their figures as HTML or
PNG, or all of it as one ZIP. Each page registers what it shows in this session, with its provenance (store,
sweep, filters, run ids, settings, package version); a law fitted under other filters or on another store than
those in force now is stale and is not offered: open its page again to refit it."""

from __future__ import annotations

import json

import streamlit as st

from app import export, ui

uri, all_runs = ui.store()
runs = ui.run_filters(all_runs)
st.title("Export")
filters = ui.current_filters()

st.subheader("Runs table")
table = ui.run_table(runs)
c1, c2 = st.columns(2)
c1.download_button("Runs (CSV)", export.table_bytes(table, "csv"), "runs-filtered.csv", "text/csv",
                   key="dl_runs_csv", on_click="ignore")
c2.download_button("Runs (Parquet)", export.table_bytes(table, "parquet"), "runs-filtered.parquet",
                   "application/vnd.apache.parquet", key="dl_runs_parquet", on_click="ignore")

exports = st.session_state.get("exports", {})
if not any(items["laws"] or items["figures"] or items["tables"] for items in exports.values()):
    st.info("Nothing fitted in this session yet: open Loss laws, Hyperparameters or Critical batch size, then "
            "come back here.")
    st.stop()

laws, stale, files = {}, [], {}
for section, items in exports.items():
    for name, law in items["laws"].items():
        provenance = items["provenance"].get(f"laws/{name}", {})
        if export.is_stale(provenance, uri, filters):
            stale.append(f"{section}/{name}")
        else:
            laws[f"{section}/{name}"] = export.with_provenance(law, provenance)

st.subheader("Fitted laws")
if stale:
    st.warning(f"Not offered, fitted under other filters or on another store than those in force now: "
               f"{', '.join(stale)}. Open their pages again to refit them on what you see.")
if laws:
    st.write(", ".join(f"`{name}`" for name in laws))
    files["laws.json"] = export.laws_json(laws)
    st.download_button("Fitted laws (JSON)", files["laws.json"], "laws.json", "application/json", key="dl_laws",
                       on_click="ignore")
else:
    st.caption("No law fitted yet.")

st.subheader("Tables")
for section, items in exports.items():
    for name, df in items["tables"].items():
        if export.is_stale(items["provenance"].get(f"tables/{name}", {}), uri, filters):
            continue
        c1, c2, c3 = st.columns([2, 1, 1])
        c1.write(f"{section} / **{name}** ({df.height} rows)")
        csv = export.table_bytes(df, "csv")
        files[export.file_name(section, name, "csv")] = csv
        c2.download_button("CSV", csv, export.file_name(section, name, "csv"), "text/csv",
                           key=f"dl_{section}_{name}_csv", on_click="ignore")
        c3.download_button("Parquet", export.table_bytes(df, "parquet"), export.file_name(section, name, "parquet"),
                           "application/vnd.apache.parquet", key=f"dl_{section}_{name}_parquet", on_click="ignore")

st.subheader("Figures")
png_ok, why = export.png_support()
if not png_ok:
    st.caption(why)
figures = {}
for section, items in exports.items():
    for name, fig in items["figures"].items():
        if export.is_stale(items["provenance"].get(f"figures/{name}", {}), uri, filters):
            continue
        figures[export.file_name(section, name, "html")] = fig
        c1, c2, c3 = st.columns([2, 1, 1])
        c1.write(f"{section} / **{name}**")
        # deferred (callables): the bytes are made only when the button is pressed
        c2.download_button("HTML", lambda f=fig: export.figure_html(f), export.file_name(section, name, "html"),
                           "text/html", key=f"dl_{section}_{name}_html", on_click="ignore")
        if png_ok:
            c3.download_button("PNG", lambda f=fig: export.figure_png(f), export.file_name(section, name, "png"),
                               "image/png", key=f"dl_{section}_{name}_png", on_click="ignore")

st.subheader("Everything")
provenance = {name: law["provenance"] for name, law in laws.items()}


def page_zip() -> bytes:
    everything = {**files, **{name: export.figure_html(fig) for name, fig in figures.items()},
                  "provenance.json": (json.dumps({"store": uri, "filters": filters, "laws": provenance,
                                                  "version": export.package_version()}, indent=2, default=str)
                                      + "\n").encode()}
    return export.zip_bytes(everything)


st.session_state["export_file_names"] = ["runs-filtered.csv", "runs-filtered.parquet", *files, *figures,
                                         "scaling-lab-export.zip"]  # what this page offers, by name
st.download_button("All of the above (ZIP)", page_zip, "scaling-lab-export.zip", "application/zip",
                   key="dl_zip", on_click="ignore")
