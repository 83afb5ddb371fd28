import numpy as np
import pytest

from workbench.data import adapt_to_shape, load_user_data
from workbench.errors import WorkbenchError


def test_npz_with_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 64), np.float32), y=np.arange(5))
    data = load_user_data(path)
    assert len(data) == 5 and data.num_classes == 5


def test_npz_inputs_by_model_input_name(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, ids=np.zeros((3, 4), np.int64), mask=np.ones((3, 4), np.int64))
    data = load_user_data(path, input_names=["ids", "mask"])
    assert [x.dtype for x in data.inputs] == [np.int64, np.int64] and data.labels is None


def test_csv_with_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n")
    data = load_user_data(path)
    assert data.inputs[0].shape == (2, 2) and list(data.labels) == [0, 1]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", b"", "empty"),
        ("text.csv", b"a,label\nhello,1\n", "numeric"),
        ("nolabel.npz", None, "no 'x' array"),
        ("broken.npz", b"PK\x03\x04garbage", "not a readable .npz"),
        ("data.json", b"{}", "unsupported data format"),
    ],
)
def test_bad_data_files_name_the_file_and_problem(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is None:
        np.savez(path, features=np.zeros((2, 2)))
    else:
        path.write_bytes(content)
    with pytest.raises(WorkbenchError) as info:
        load_user_data(path)
    assert name in str(info.value) and expected in str(info.value)


def test_negative_or_fractional_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 4)), y=np.array([0.5, -1]))
    with pytest.raises(WorkbenchError, match="non-negative integers"):
        load_user_data(path)


def test_adapt_to_shape_reshapes_or_explains():
    x = np.zeros((4, 64), np.float64)
    assert adapt_to_shape(x, ["batch", 1, 8, 8], np.dtype(np.float32), "d").shape == (4, 1, 8, 8)
    with pytest.raises(WorkbenchError, match="the model expects"):
        adapt_to_shape(np.zeros((4, 10)), ["batch", 1, 8, 8], np.dtype(np.float32), "d")


def test_sample_of_a_sorted_set_is_fair_in_every_prefix():
    from workbench.data import Dataset

    data = Dataset("d", (np.arange(100, dtype=np.float32).reshape(100, 1),), np.repeat(np.arange(10), 10))
    few = data.sample(50)
    assert len(few) == 50 and len(set(few.inputs[0][:, 0])) == 50
    assert np.array_equal(few.labels, few.inputs[0][:, 0].astype(int) // 10)   # labels stay with their samples
    assert len(set(few.take(10).labels)) >= 5      # the first rows are not all one class
    assert len(data.sample(500)) == 100 and np.array_equal(data.sample(50).labels, few.labels)   # seeded


def test_the_solving_sample_is_a_fixed_draw_of_every_class_even_from_a_sorted_training_file():
    from workbench.data import Dataset, Splits

    train = Dataset("t", (np.arange(3000, dtype=np.float32).reshape(3000, 1),), np.repeat(np.arange(10), 300))
    calib = Dataset("c", (np.zeros((5, 1), np.float32),), np.zeros(5, np.int64))
    splits = Splits(train, calib, calib)
    drawn = splits.solving_sample(100)
    assert len(drawn) == 100 and set(drawn.labels) == set(range(10))     # a prefix would be class 0 only
    assert np.array_equal(drawn.inputs[0], splits.solving_sample(100).inputs[0])   # the run and its preview agree
    assert len(splits.solving_sample(5000)) == 3000
    assert np.array_equal(Splits(None, calib, calib).solving_sample(3).inputs[0], calib.inputs[0][:3])
